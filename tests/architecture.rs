//! The layout is the architecture (`src/lib.rs`, README "Layout"): the pure core imports
//! nothing from the I/O edges or the commands, the edges import no command, only the demo uses
//! the throwaway clusters, and no file of `src/` imports another that imports it back. These
//! tests read the source tree, so they need no server.
//!
//! An import is every `crate::…` and `super::…` path a file names outside its `#[cfg(test)]`
//! items (doc links included: a doc that must point at a command is a sign the code should
//! too), resolved to the deepest module that is a file; a file naming its own ancestor (a
//! child using its parent's items) is not an edge, as `../shared/hooks/before-stop` counts.
//! Unlike that hook, which ignores everything after a file's first `#[cfg(test)]`, only the
//! test item itself is left out, so code after a `#[cfg(test)] mod tests;` is checked too.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Where each top-level module of `src/` lives. A new module must be placed here.
const ROOMS: &[(&str, Room)] = &[
    ("lsn", Room::Core),
    ("time", Room::Core),
    ("identifier", Room::Core),
    ("value", Room::Core),
    ("pgoutput", Room::Core),
    ("changes", Room::Core),
    ("dead_letter", Room::Core),
    ("mapping", Room::Core),
    ("points", Room::Core),
    ("config", Room::Settings),
    ("cli", Room::Settings),
    ("pg", Room::Edge),
    ("store", Room::Edge),
    ("http", Room::Edge),
    ("telemetry", Room::Edge),
    ("signal", Room::Edge),
    ("daemon", Room::Command),
    ("cmd", Room::Command),
    ("testing", Room::Testing),
];

/// What a pure-core file must not name: I/O, the runtime, the drivers, a clock.
const IMPURE: &[&str] = &[
    "tokio",
    "tokio_postgres",
    "pgwire_replication",
    "std::fs",
    "std::net",
    "std::process",
    "std::env",
    "SystemTime::now",
    "Instant::now",
    "now_micros",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Room {
    Core,
    Settings,
    Edge,
    Command,
    Testing,
}

impl Room {
    /// Whether a module of this room may import one of `to`.
    fn may_import(self, to: Room) -> bool {
        match self {
            Room::Core => to == Room::Core,
            Room::Settings => matches!(to, Room::Core | Room::Settings),
            Room::Edge => matches!(to, Room::Core | Room::Settings | Room::Edge),
            Room::Command => to != Room::Testing,
            Room::Testing => to == Room::Core,
        }
    }
}

/// A module path below the crate root, e.g. `["daemon", "batch"]`.
type ModPath = Vec<String>;

/// One source file of the library.
struct File {
    path: PathBuf,
    /// Its text without its `#[cfg(test)]` items.
    code: String,
}

/// Every library file by module path, leaving out test-only modules (`#[cfg(test)] mod x;`).
fn library() -> BTreeMap<ModPath, File> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = BTreeMap::new();
    let mut test_only = BTreeSet::new();
    for path in rust_files(&root) {
        let rel = path.strip_prefix(&root).unwrap();
        if rel == Path::new("main.rs") {
            continue; // the binary: a crate of its own, which imports `walpoints::…`
        }
        let mut module: ModPath = rel
            .with_extension("")
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        if matches!(module.last().map(String::as_str), Some("mod" | "lib")) {
            module.pop();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for child in test_modules(&text) {
            let mut m = module.clone();
            m.push(child);
            test_only.insert(m);
        }
        let code = without_test_items(&text);
        files.insert(module, File { path, code });
    }
    files.retain(|m, _| !test_only.contains(m));
    files
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// `text` with every item marked `#[cfg(test)]` left out: up to its `;` or through its
/// `{…}` block, skipping over strings, characters and comments.
fn without_test_items(text: &str) -> String {
    const MARK: &str = "#[cfg(test)]";
    let b = text.as_bytes();
    let mut out = String::new();
    let mut i = 0;
    while let Some(at) = text[i..].find(MARK) {
        out.push_str(&text[i..i + at]);
        let mut j = i + at + MARK.len();
        let mut depth = 0usize;
        while j < b.len() {
            j = skip_literal(b, j);
            match b.get(j) {
                Some(b'{') => depth += 1,
                Some(b'}') => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        j += 1;
                        break;
                    }
                }
                Some(b';') if depth == 0 => {
                    j += 1;
                    break;
                }
                _ => {}
            }
            j += 1;
        }
        i = j.min(b.len());
    }
    out.push_str(&text[i..]);
    out
}

/// Past a string, raw string, character literal or comment starting at `b[i]`; `i` otherwise.
fn skip_literal(b: &[u8], i: usize) -> usize {
    let rest = &b[i..];
    if rest.starts_with(b"//") {
        return i + rest.iter().position(|c| *c == b'\n').unwrap_or(rest.len());
    }
    if rest.starts_with(b"/*") {
        return i + rest
            .windows(2)
            .position(|w| w == b"*/")
            .map_or(rest.len(), |p| p + 2);
    }
    if rest.starts_with(b"r#") || rest.starts_with(b"r\"") {
        let hashes = rest[1..].iter().take_while(|c| **c == b'#').count();
        let close: Vec<u8> = std::iter::once(b'"')
            .chain(std::iter::repeat_n(b'#', hashes))
            .collect();
        let body = 2 + hashes;
        return i
            + body
            + rest[body.min(rest.len())..]
                .windows(close.len())
                .position(|w| w == close.as_slice())
                .map_or(rest.len(), |p| p + close.len());
    }
    if rest.first() == Some(&b'"') {
        let mut k = 1;
        while k < rest.len() && rest[k] != b'"' {
            k += if rest[k] == b'\\' { 2 } else { 1 };
        }
        return i + k;
    }
    // A character literal: `'x'` or `'\x'` (a lifetime `'a` has no closing quote after one char).
    if rest.first() == Some(&b'\'') {
        if rest.get(1) == Some(&b'\\') {
            return i + rest[2..]
                .iter()
                .position(|c| *c == b'\'')
                .map_or(1, |p| p + 2);
        }
        if rest.get(2) == Some(&b'\'') {
            return i + 2;
        }
    }
    i
}

/// The modules a file declares under `#[cfg(test)]`.
fn test_modules(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut lines = text.lines().map(str::trim);
    while let Some(line) = lines.next() {
        if line == "#[cfg(test)]" {
            if let Some(decl) = lines.next() {
                if let Some(name) = decl.strip_prefix("mod ").and_then(|d| d.strip_suffix(';')) {
                    out.push(name.trim().to_owned());
                }
            }
        }
    }
    out
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Every path named after `crate::` or `super::` in `code`, as written below the crate root
/// (`super` resolved against `module`); a `{…}` group gives one path per member.
fn imports(module: &ModPath, code: &str) -> Vec<ModPath> {
    let b = code.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let at_word = i == 0 || !is_ident(b[i - 1]);
        let base = if !at_word {
            None
        } else if b[i..].starts_with(b"crate::") {
            i += "crate::".len();
            Some(Vec::new())
        } else if b[i..].starts_with(b"super::") {
            // `super::super::…` climbs once per `super`.
            let mut base = module.clone();
            while b[i..].starts_with(b"super::") {
                base.pop();
                i += "super::".len();
            }
            Some(base)
        } else {
            None
        };
        match base {
            Some(base) => i = tree(b, i, base, &mut out),
            None => i += 1,
        }
    }
    out
}

/// Reads a use-tree at `b[i..]` below `prefix` into `out`; returns where it ends.
fn tree(b: &[u8], mut i: usize, mut prefix: ModPath, out: &mut Vec<ModPath>) -> usize {
    loop {
        if b.get(i) == Some(&b'{') {
            i += 1;
            loop {
                while b
                    .get(i)
                    .is_some_and(|c| c.is_ascii_whitespace() || *c == b',')
                {
                    i += 1;
                }
                if b.get(i).is_none_or(|c| *c == b'}') {
                    return i + 1;
                }
                let before = i;
                i = tree(b, i, prefix.clone(), out);
                if i == before {
                    i += 1; // `self`, `*`, or something unexpected: step over it
                }
            }
        }
        let start = i;
        while b.get(i).is_some_and(|c| is_ident(*c)) {
            i += 1;
        }
        if i == start {
            out.push(prefix);
            return i;
        }
        let segment = String::from_utf8_lossy(&b[start..i]).into_owned();
        if segment != "self" {
            prefix.push(segment);
        }
        if b[i..].starts_with(b"::") {
            i += 2;
        } else {
            // `as` renames and whatever follows end the path.
            out.push(prefix);
            return i;
        }
    }
}

/// The deepest module among `files` that `path` names.
fn resolve(files: &BTreeMap<ModPath, File>, path: &[String]) -> Option<ModPath> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|m| files.contains_key(m))
}

/// Module → the modules it imports (not itself, not its ancestors).
fn graph(files: &BTreeMap<ModPath, File>) -> BTreeMap<ModPath, BTreeSet<ModPath>> {
    files
        .iter()
        .map(|(module, file)| {
            let edges = imports(module, &file.code)
                .iter()
                .filter_map(|p| resolve(files, p))
                .filter(|to| to != module && !module.starts_with(to))
                .collect();
            (module.clone(), edges)
        })
        .collect()
}

fn show(m: &ModPath) -> String {
    if m.is_empty() {
        "crate".into()
    } else {
        m.join("::")
    }
}

fn room_of(m: &ModPath) -> Option<Room> {
    let top = m.first()?;
    ROOMS.iter().find(|(name, _)| name == top).map(|(_, r)| *r)
}

#[test]
fn every_module_is_in_a_room() {
    let files = library();
    let homeless: Vec<String> = files
        .keys()
        .filter(|m| !m.is_empty() && room_of(m).is_none())
        .map(show)
        .collect();
    assert!(
        homeless.is_empty(),
        "modules in no room (add them to ROOMS, and to lib.rs's doc and README \"Layout\"): {homeless:?}"
    );
}

#[test]
fn the_core_imports_no_edge_and_no_edge_imports_a_command() {
    let files = library();
    let mut wrong = Vec::new();
    for (from, to) in graph(&files) {
        let (Some(a), module) = (room_of(&from), &from) else {
            continue; // the crate root declares everything
        };
        for t in to {
            let Some(b) = room_of(&t) else { continue };
            let demo_uses_clusters =
                module.starts_with(&["cmd".into(), "demo".into()]) && b == Room::Testing;
            if !a.may_import(b) && !demo_uses_clusters {
                wrong.push(format!(
                    "{} ({a:?}) imports {} ({b:?})",
                    show(&from),
                    show(&t)
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports across the rooms' rule:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_core_does_no_io_and_reads_no_clock() {
    let files = library();
    let mut wrong = Vec::new();
    for (module, file) in &files {
        if room_of(module) != Some(Room::Core) {
            continue;
        }
        for token in IMPURE {
            // `time` owns the one wall-clock reading, for operators; nothing else of the core.
            let owner = module == &vec!["time".to_owned()]
                && matches!(*token, "SystemTime::now" | "now_micros");
            if file.code.contains(token) && !owner {
                wrong.push(format!("{} names {token}", file.path.display()));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "the pure core is not pure:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn no_file_imports_one_that_imports_it_back() {
    let g = graph(&library());
    let circles = strongly_connected(&g);
    let shown: Vec<String> = circles
        .iter()
        .map(|c| {
            format!(
                "among {}",
                c.iter().map(show).collect::<Vec<_>>().join(", ")
            )
        })
        .collect();
    assert!(shown.is_empty(), "import circles:\n{}", shown.join("\n"));
}

/// Components of more than one module (Tarjan's algorithm).
fn strongly_connected(g: &BTreeMap<ModPath, BTreeSet<ModPath>>) -> Vec<Vec<ModPath>> {
    struct Walk<'g> {
        g: &'g BTreeMap<ModPath, BTreeSet<ModPath>>,
        index: BTreeMap<&'g ModPath, usize>,
        low: BTreeMap<&'g ModPath, usize>,
        stack: Vec<&'g ModPath>,
        out: Vec<Vec<ModPath>>,
    }
    impl<'g> Walk<'g> {
        fn visit(&mut self, v: &'g ModPath) {
            let n = self.index.len();
            self.index.insert(v, n);
            self.low.insert(v, n);
            self.stack.push(v);
            for w in self.g.get(v).into_iter().flatten() {
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let lw = self.low[w];
                    let lv = self.low.get_mut(v).unwrap();
                    *lv = (*lv).min(lw);
                } else if self.stack.contains(&w) {
                    let iw = self.index[w];
                    let lv = self.low.get_mut(v).unwrap();
                    *lv = (*lv).min(iw);
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = Vec::new();
                while let Some(w) = self.stack.pop() {
                    component.push(w.clone());
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort();
                    self.out.push(component);
                }
            }
        }
    }
    let mut walk = Walk {
        g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        out: Vec::new(),
    };
    for v in g.keys() {
        if !walk.index.contains_key(v) {
            walk.visit(v);
        }
    }
    walk.out
}

#[test]
fn the_checks_see_imports_and_circles() {
    // The parser on the shapes `src/` uses, and the circle finder on a known circle.
    let m: ModPath = vec!["daemon".into(), "batch".into()];
    let found = imports(
        &m,
        "use crate::{lsn::Lsn, pg::{self, slot::Slot}};\nuse super::super::cmd::tail as t;\n\
         /// [`crate::store::StoreTx`]\nfn f() { crate::time::now_micros(); }",
    );
    let shown: Vec<String> = found.iter().map(show).collect();
    assert_eq!(
        shown,
        [
            "lsn::Lsn",
            "pg",
            "pg::slot::Slot",
            "cmd::tail",
            "store::StoreTx",
            "time::now_micros"
        ]
    );
    let a: ModPath = vec!["a".into()];
    let b: ModPath = vec!["b".into()];
    let c: ModPath = vec!["c".into()];
    let g = BTreeMap::from([
        (a.clone(), BTreeSet::from([b.clone()])),
        (b.clone(), BTreeSet::from([a.clone(), c.clone()])),
        (c.clone(), BTreeSet::new()),
    ]);
    assert_eq!(strongly_connected(&g), vec![vec![a, b]]);
}

#[test]
fn test_items_are_left_out_and_the_rest_is_kept() {
    let text =
        "use crate::a;\n#[cfg(test)]\nmod tests;\nuse crate::b;\n#[cfg(test)]\nmod t {\n    \
                const S: &str = \"}\";\n    const C: char = '{';\n    use crate::c; // }\n}\n\
                fn f<'x>() -> &'x str { \"crate::d\" }\n";
    let kept = without_test_items(text);
    assert!(
        kept.contains("crate::a") && kept.contains("crate::b"),
        "{kept}"
    );
    assert!(
        !kept.contains("crate::c") && kept.contains("crate::d"),
        "{kept}"
    );
    assert_eq!(test_modules(text), ["tests"]);
}

#[test]
fn readme_layout_lists_every_file_of_src() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let layout = readme
        .split("\n## Layout\n")
        .nth(1)
        .expect("README.md has a \"## Layout\" section");
    let layout = layout.split("\n## ").next().unwrap_or(layout);
    let missing: Vec<String> = rust_files(&root.join("src"))
        .iter()
        .map(|p| p.strip_prefix(root).unwrap().display().to_string())
        .filter(|p| !layout.contains(&format!("`{p}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "README \"Layout\" does not list {missing:?} (each as `src/…` in backticks)"
    );
}

#[test]
fn every_test_file_is_a_module_of_the_one_binary() {
    // With `autotests = false`, a file of `tests/` that `tests/main.rs` does not declare is
    // never compiled: its tests would silently not exist.
    let tests = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let main = std::fs::read_to_string(tests.join("main.rs")).unwrap();
    let declared: BTreeSet<&str> = main
        .lines()
        .filter_map(|l| l.trim().strip_prefix("mod "))
        .filter_map(|l| l.strip_suffix(';'))
        .collect();
    let mut missing = Vec::new();
    for entry in std::fs::read_dir(&tests).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let is_module =
            path.extension().is_some_and(|e| e == "rs") || path.join("mod.rs").is_file();
        if is_module && name != "main" && !declared.contains(name.as_str()) {
            missing.push(name);
        }
    }
    assert!(
        missing.is_empty(),
        "tests/main.rs does not declare {missing:?}"
    );
}
