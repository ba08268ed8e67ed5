//! The README stays true to the code: every `README.md#anchor` that a message of walpoints
//! points an operator to (and every `(#anchor)` link inside the README) names a heading of the
//! README, the README's annotated `walpoints.toml` is `walpoints.example.toml` word for
//! word, and its lists of dead-letter reasons and rejections are the code's.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use walpoints::dead_letter::Reason;
use walpoints::points::Rejection;

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

/// The backticked codes in the first column of the Markdown table that follows `header`.
fn table_codes<'a>(readme: &'a str, header: &str) -> Vec<&'a str> {
    let start = readme
        .find(header)
        .unwrap_or_else(|| panic!("README.md has no table headed {header:?}"));
    readme[start..]
        .lines()
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .filter_map(|l| l.split('`').nth(1))
        .collect()
}

#[test]
fn the_dead_letter_table_lists_every_reason_in_order() {
    let readme = read(&root().join("README.md"));
    let expected: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(table_codes(&readme, "| reason | the row |"), expected);
}

#[test]
fn the_metrics_table_lists_every_rejection_in_order() {
    let readme = read(&root().join("README.md"));
    let row = readme
        .lines()
        .find(|l| l.starts_with("| `walpoints_rejected_total{reason}`"))
        .expect("README.md's metrics table has walpoints_rejected_total");
    let listed: Vec<&str> = row
        .rsplit(": ")
        .next()
        .unwrap_or("")
        .split('`')
        .skip(1)
        .step_by(2)
        .collect();
    let expected: Vec<&str> = Rejection::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(listed, expected);
}
