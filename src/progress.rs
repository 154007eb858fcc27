//! `progress.rs`: what the long stages (read, write, each verification check, each forward)
//! report while they run, on stderr — never on stdout, which stays the command's parseable
//! output. The binary chooses the [`Mode`] once: labelled indicatif bars when stderr is a
//! terminal, one plain line per finished stage when it is not (a log, a pipe, CI), nothing
//! with `--quiet`. The stages only say what they do (`Progress::stage`, `Stage::inc`,
//! `Stage::finish`); how it shows is decided here. Upstream has no equivalent (mmengine
//! logs through its runner's hooks).
//!
//! Depends on nothing in the crate, so every stage may use it.

use std::io::IsTerminal;
use std::time::Instant;

/// How progress shows on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One labelled progress bar per stage (stderr is a terminal).
    Bars,
    /// One plain line per stage when it finishes: `comer-port: LABEL: DETAIL (T s)`.
    Lines,
    /// Nothing (`--quiet`, or a caller that reports on its own such as `demo`).
    Quiet,
}

/// What a stage counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Bytes (a file written).
    Bytes,
    /// Steps (tensors, checks, inputs).
    Steps,
}

/// The progress reporter handed to the stages; cheap to copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    mode: Mode,
}

impl Progress {
    /// Reports nothing.
    pub const QUIET: Progress = Progress { mode: Mode::Quiet };

    /// A reporter in `mode`.
    pub fn new(mode: Mode) -> Self {
        Progress { mode }
    }

    /// Bars when stderr is a terminal, plain lines when it is not, nothing when `quiet`.
    pub fn for_stderr(quiet: bool) -> Self {
        let mode = if quiet {
            Mode::Quiet
        } else if std::io::stderr().is_terminal() {
            Mode::Bars
        } else {
            Mode::Lines
        };
        Progress { mode }
    }

    /// How this reporter shows progress.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// A stage called `label` of `total` units, started now.
    pub fn stage(&self, label: impl Into<String>, total: u64, unit: Unit) -> Stage {
        // Labels name files and keys from the input: escaped before they reach the terminal.
        let label = crate::text::escape(&label.into()).into_owned();
        let bar = (self.mode == Mode::Bars).then(|| {
            let template = match unit {
                Unit::Bytes => "{prefix} [{bar:30}] {bytes}/{total_bytes} {msg}",
                Unit::Steps => "{prefix} [{bar:30}] {pos}/{len} {msg}",
            };
            let style = indicatif::ProgressStyle::with_template(template)
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> ");
            let bar = indicatif::ProgressBar::with_draw_target(Some(total), indicatif::ProgressDrawTarget::stderr())
                .with_style(style)
                .with_prefix(label.clone());
            bar.tick();
            bar
        });
        Stage { label, mode: self.mode, bar, start: Instant::now(), done: false }
    }
}

/// One running stage. Finish it with [`Stage::finish`]; a stage dropped unfinished (an
/// error stopped it) leaves its bar where it stopped and prints no line.
pub struct Stage {
    label: String,
    mode: Mode,
    bar: Option<indicatif::ProgressBar>,
    start: Instant,
    done: bool,
}

impl Stage {
    /// `n` more units done.
    pub fn inc(&self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc(n);
        }
    }

    /// What the stage is on now (shown beside its bar).
    pub fn message(&self, msg: impl Into<String>) {
        if let Some(b) = &self.bar {
            b.set_message(crate::text::escape(&msg.into()).into_owned());
        }
    }

    /// The stage is done: `detail` says what it did (empty: nothing to add). The bar stays
    /// on screen, complete; in [`Mode::Lines`] one line is printed.
    pub fn finish(mut self, detail: &str) {
        self.done = true;
        let secs = self.start.elapsed().as_secs_f64();
        match self.mode {
            Mode::Bars => {
                if let Some(b) = &self.bar {
                    b.set_position(b.length().unwrap_or(0));
                    b.finish_with_message(format!("{} ({secs:.2} s)", crate::text::escape(detail)));
                }
            }
            Mode::Lines => eprintln!("{}", line(&self.label, detail, secs)),
            Mode::Quiet => {}
        }
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        if !self.done
            && let Some(b) = &self.bar
        {
            b.abandon();
        }
    }
}

/// The plain line of a finished stage.
fn line(label: &str, detail: &str, secs: f64) -> String {
    let detail = crate::text::escape(detail);
    if detail.is_empty() {
        format!("comer-port: {label} ({secs:.2} s)")
    } else {
        format!("comer-port: {label}: {detail} ({secs:.2} s)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_names_the_stage_and_what_it_did() {
        assert_eq!(line("read a.pth", "56 tensors", 0.5), "comer-port: read a.pth: 56 tensors (0.50 s)");
        assert_eq!(line("verify: backbone", "", 1.0), "comer-port: verify: backbone (1.00 s)");
    }

    #[test]
    fn quiet_and_lines_draw_no_bar() {
        for mode in [Mode::Quiet, Mode::Lines] {
            let s = Progress::new(mode).stage("x", 3, Unit::Steps);
            assert!(s.bar.is_none());
            s.inc(1);
        }
        assert_eq!(Progress::for_stderr(true).mode(), Mode::Quiet);
    }
}
