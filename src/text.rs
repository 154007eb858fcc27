//! `text.rs`: untrusted text made safe to print. Key names, file names, metadata values and
//! anything else a checkpoint or a command line supplies can hold terminal control sequences
//! (`ESC [2J` clears the screen, `ESC ]` sets the title, a newline starts a fake line) or
//! Unicode controls that reorder or hide what is shown (U+202E right-to-left override,
//! zero-width characters). Every human-readable output prints such strings through
//! [`Escaped`] (or [`escape`]), which writes each of those characters as a visible escape
//! (`\x1b`, `\n`, `\u{202e}`) and leaves everything else as it is. JSON output needs no
//! wrapper for C0 controls (serde escapes them); [`json_safe`] escapes the rest the same way
//! inside JSON strings, so the text stays valid JSON with the same values. No upstream
//! counterpart: PyTorch prints keys raw.

use std::borrow::Cow;
use std::fmt;
use std::path::Path;

/// Whether `c` is escaped when printed: C0 controls (newline and tab included), DEL, C1
/// controls, the bidirectional embeddings, overrides and isolates, the invisible format
/// characters (zero-width space/joiners, word joiner, BOM, Mongolian vowel separator) and
/// the line and paragraph separators.
pub fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}'
                | '\u{180e}'
                | '\u{200b}'..='\u{200f}'
                | '\u{2028}'..='\u{202e}'
                | '\u{2060}'..='\u{2069}'
                | '\u{feff}'
        )
}

/// Write `c` as a visible escape: `\n`, `\r`, `\t`, `\x1b` for other ASCII controls,
/// `\u{202e}` for the rest.
fn write_escape(f: &mut impl fmt::Write, c: char) -> fmt::Result {
    match c {
        '\n' => f.write_str("\\n"),
        '\r' => f.write_str("\\r"),
        '\t' => f.write_str("\\t"),
        c if (c as u32) < 0x80 => write!(f, "\\x{:02x}", c as u32),
        c => write!(f, "\\u{{{:x}}}", c as u32),
    }
}

/// Write `s` with every character [`needs_escape`] names escaped.
fn write_escaped(f: &mut impl fmt::Write, s: &str) -> fmt::Result {
    let mut rest = s;
    while let Some(i) = rest.find(needs_escape) {
        f.write_str(&rest[..i])?;
        let c = rest[i..].chars().next().unwrap_or_default();
        write_escape(f, c)?;
        rest = &rest[i + c.len_utf8()..];
    }
    f.write_str(rest)
}

/// Displays a string with every character [`needs_escape`] names written as a visible
/// escape; `format!("{}", Escaped(s))` is `s` itself when nothing needs escaping.
#[derive(Debug, Clone, Copy)]
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Padding and alignment (`{:<20}`) apply to the escaped text as a whole.
        if f.width().is_some() || f.precision().is_some() {
            let mut s = String::with_capacity(self.0.len());
            write_escaped(&mut s, self.0)?;
            return f.pad(&s);
        }
        write_escaped(f, self.0)
    }
}

/// Displays a path like [`Path::display`] (invalid UTF-8 as U+FFFD), escaped like [`Escaped`].
#[derive(Debug, Clone, Copy)]
pub struct EscapedPath<'a>(pub &'a Path);

impl fmt::Display for EscapedPath<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        Escaped(&self.0.to_string_lossy()).fmt(f)
    }
}

/// A string or a path that [`esc`] displays escaped.
pub trait Untrusted {
    /// The text (a path's as [`Path::to_string_lossy`] gives it).
    fn text(&self) -> Cow<'_, str>;
}

impl Untrusted for str {
    fn text(&self) -> Cow<'_, str> {
        Cow::Borrowed(self)
    }
}

impl Untrusted for String {
    fn text(&self) -> Cow<'_, str> {
        Cow::Borrowed(self)
    }
}

impl Untrusted for Path {
    fn text(&self) -> Cow<'_, str> {
        self.to_string_lossy()
    }
}

impl Untrusted for std::path::PathBuf {
    fn text(&self) -> Cow<'_, str> {
        self.to_string_lossy()
    }
}

/// What [`esc`] returns: displays its text like [`Escaped`].
#[derive(Debug, Clone)]
pub struct Esc<'a>(Cow<'a, str>);

impl fmt::Display for Esc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        Escaped(&self.0).fmt(f)
    }
}

/// A string or path displayed escaped: what the typed errors' messages use for every key,
/// entry, file name and reason they embed (`#[error("{path}: …", path = esc(.path))]`).
pub fn esc<T: Untrusted + ?Sized>(x: &T) -> Esc<'_> {
    Esc(x.text())
}

/// `s` with every character [`needs_escape`] names escaped (borrowed when there is none).
pub fn escape(s: &str) -> Cow<'_, str> {
    if s.contains(needs_escape) { Cow::Owned(Escaped(s).to_string()) } else { Cow::Borrowed(s) }
}

/// `s` escaped except its line breaks: for text that is several lines by design (an error
/// chain whose messages list keys one per line, a rendered table), where each untrusted
/// piece was escaped when the text was made and this is the last guard.
pub fn escape_keeping_lines(s: &str) -> String {
    s.split('\n').map(|line| escape(line).into_owned()).collect::<Vec<_>>().join("\n")
}

/// Serialised JSON with the characters [`needs_escape`] names that serde leaves raw (DEL,
/// C1, bidirectional and invisible format characters; serde already escapes C0) written as
/// `\uXXXX` escapes: still valid JSON with the same values, and safe on a terminal. Such
/// characters can only occur inside JSON strings, where `\uXXXX` means the character itself.
pub fn json_safe(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        // serde escapes C0 inside strings; a raw C0 character here is JSON's own whitespace.
        if needs_escape(c) && (c == '\u{7f}' || !c.is_ascii_control()) {
            // Every such character is in the Basic Multilingual Plane: one \u escape.
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_are_escaped_and_the_rest_kept() {
        let s = "\u{1b}[2J\u{1b}[Hverdict passed\n\t\r\u{7f}\u{9b}x\u{202e}y\u{200b}é猫";
        let e = Escaped(s).to_string();
        assert_eq!(e, "\\x1b[2J\\x1b[Hverdict passed\\n\\t\\r\\x7f\\u{9b}x\\u{202e}y\\u{200b}é猫");
        assert!(!e.chars().any(needs_escape));
        assert_eq!(escape("blocks.0.attn.qkv.weight"), Cow::Borrowed("blocks.0.attn.qkv.weight"));
        assert_eq!(format!("{:<6}|", Escaped("a")), "a     |");
        assert_eq!(EscapedPath(Path::new("/tmp/a\u{1b}b")).to_string(), "/tmp/a\\x1bb");
        assert_eq!(escape_keeping_lines("a\u{1b}\nb\u{202e}"), "a\\x1b\nb\\u{202e}");
    }

    #[test]
    fn json_stays_json_with_the_same_values() {
        let key = "k\u{1b}[2J\u{7f}\u{9b}\u{202e}\u{2028}x";
        let text = serde_json::to_string(&serde_json::json!({ key: key })).expect("json");
        let safe = json_safe(&text);
        assert!(!safe.chars().any(needs_escape), "{safe:?}");
        let back: serde_json::Value = serde_json::from_str(&safe).expect("still JSON");
        assert_eq!(back[key], key);
    }
}
