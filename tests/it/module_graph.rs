//! The module graph has no cycles (issue 12): between the top-level modules of `src/` (the
//! stage folders and the modules above them) and between the files inside each folder.
//! Read from the source text (`crate::…` and `super::…` paths, brace groups expanded one
//! level), test modules excluded; the graph is drawn in `docs/ARCHITECTURE.md`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("src readable").flatten() {
        let p = e.path();
        if p.is_dir() {
            rs_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Module names a source text refers to after `prefix` (`crate::` or `super::`): the first
/// path segment, and for `crate::` also the second (`crate::a::b` → (a, Some(b))); brace
/// groups give one entry per member.
fn refs(text: &str, prefix: &str) -> Vec<(String, Option<String>)> {
    let ident = |s: &str| -> String { s.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect() };
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find(prefix) {
        // Not part of a longer path (`x::super::`), not a comment's prose.
        let before = rest[..i].chars().last();
        rest = &rest[i + prefix.len()..];
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        let mut firsts = Vec::new();
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            firsts.extend(group[..end].split(',').map(|m| ident(m.trim())).map(|a| (a, None)));
        } else {
            let a = ident(rest);
            let after = &rest[a.len()..];
            let second = after.strip_prefix("::").map(|r| {
                if let Some(g) = r.strip_prefix('{') {
                    let end = g.find('}').unwrap_or(g.len());
                    g[..end].split(',').map(|m| ident(m.trim())).collect::<Vec<_>>()
                } else {
                    vec![ident(r)]
                }
            });
            match second {
                Some(bs) => firsts.extend(bs.into_iter().map(|b| (a.clone(), Some(b)))),
                None => firsts.push((a, None)),
            }
        }
        out.extend(firsts.into_iter().filter(|(a, _)| !a.is_empty()));
    }
    out
}

/// The first cycle of a graph, if any (depth-first search).
fn cycle(g: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match state.get(n) {
            Some(1) => {
                let at = path.iter().position(|p| p == n).unwrap_or(0);
                let mut c = path[at..].to_vec();
                c.push(n.to_string());
                return Some(c);
            }
            Some(2) => return None,
            _ => {}
        }
        state.insert(n.to_string(), 1);
        path.push(n.to_string());
        for m in g.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, g, state, path) {
                return Some(c);
            }
        }
        path.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in g.keys() {
        if let Some(c) = visit(n, g, &mut state, &mut Vec::new()) {
            return Some(c);
        }
    }
    None
}

#[test]
fn no_import_cycle_between_or_inside_stages() {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rs_files(&src, &mut files);
    let tops: BTreeSet<String> = std::fs::read_dir(&src)
        .expect("src")
        .flatten()
        .map(|e| e.path().file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default())
        .filter(|n| n != "main" && n != "lib")
        .collect();
    let mut between: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut inside: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for f in &files {
        let rel = f.strip_prefix(&src).expect("under src");
        let parts: Vec<String> = rel.iter().map(|c| c.to_string_lossy().trim_end_matches(".rs").to_string()).collect();
        if parts[0] == "main" || parts[0] == "lib" {
            continue;
        }
        let text = std::fs::read_to_string(f).expect("readable");
        let text = text.split("#[cfg(test)]").next().unwrap_or("");
        let (top, me) = (parts[0].clone(), parts.get(1).cloned());
        let siblings: BTreeSet<String> = match &me {
            Some(_) => std::fs::read_dir(src.join(&top))
                .expect("folder")
                .flatten()
                .map(|e| e.path().file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default())
                .filter(|n| n != "mod")
                .collect(),
            None => BTreeSet::new(),
        };
        for (a, b) in refs(text, "crate::") {
            if !tops.contains(&a) {
                continue;
            }
            if a != top {
                between.entry(top.clone()).or_default().insert(a);
            } else if let (Some(me), Some(b)) = (&me, b)
                && siblings.contains(&b)
                && &b != me
                && me != "mod"
            {
                inside.entry(top.clone()).or_default().entry(me.clone()).or_default().insert(b);
            }
        }
        if let Some(me) = me.filter(|m| m != "mod") {
            for (a, _) in refs(text, "super::") {
                if siblings.contains(&a) && a != me {
                    inside.entry(top.clone()).or_default().entry(me.clone()).or_default().insert(a);
                }
            }
        }
    }
    assert!(between.contains_key("import"), "the graph was read: {between:?}");
    if let Some(c) = cycle(&between) {
        panic!("import cycle between top-level modules: {}", c.join(" -> "));
    }
    for (folder, g) in &inside {
        if let Some(c) = cycle(g) {
            panic!("import cycle inside {folder}/: {}", c.join(" -> "));
        }
    }
}

#[test]
fn the_cycle_finder_finds_cycles() {
    let g: BTreeMap<String, BTreeSet<String>> = [("a", "b"), ("b", "c"), ("c", "a")]
        .into_iter()
        .map(|(x, y)| (x.to_string(), [y.to_string()].into_iter().collect()))
        .collect();
    assert_eq!(cycle(&g).map(|c| c.len()), Some(4));
    let refs = refs("use super::{artifact, policy::X};\nuse crate::families::{detect, Family};", "super::");
    assert_eq!(refs.iter().map(|r| r.0.as_str()).collect::<Vec<_>>(), ["artifact", "policy"]);
}
