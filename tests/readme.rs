//! The README stays true to the code: every `README.md#anchor` that a message of walpoints
//! points an operator to (and every `(#anchor)` link inside the README) names a heading of the
//! README, and the README's annotated `walpoints.toml` is `walpoints.example.toml` word for
//! word.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The anchor GitHub gives a heading: lowercase, punctuation dropped, spaces as hyphens.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn source_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            source_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_runbook_link_in_the_code_names_a_readme_heading() {
    let readme = read(&root().join("README.md"));
    let anchors: BTreeSet<String> = readme
        .lines()
        .filter_map(|l| l.strip_prefix('#'))
        .map(|l| anchor(l.trim_start_matches('#')))
        .collect();
    for (i, _) in readme.match_indices("](#") {
        let link: String = readme[i + 3..].chars().take_while(|c| *c != ')').collect();
        assert!(
            anchors.contains(&link),
            "README.md links to #{link}, which is no heading"
        );
    }
    let mut files = Vec::new();
    source_files(&root().join("src"), &mut files);
    let mut links = 0;
    for file in files {
        let text = read(&file);
        for (i, _) in text.match_indices("README.md#") {
            let link: String = text[i + "README.md#".len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
                .collect();
            assert!(
                anchors.contains(&link),
                "{} links to README.md#{link}, which is no heading of the README",
                file.display()
            );
            links += 1;
        }
    }
    assert!(
        links >= 10,
        "the startup refusals link to the runbook ({links} links)"
    );
}

#[test]
fn the_readme_shows_the_example_config_word_for_word() {
    let readme = read(&root().join("README.md"));
    let example = read(&root().join("walpoints.example.toml"));
    assert!(
        readme.contains(&format!("```toml\n{example}```\n")),
        "README.md's annotated walpoints.toml differs from walpoints.example.toml"
    );
}
