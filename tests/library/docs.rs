//! The environment variables are listed once, in `config::SETTINGS`; the
//! README's configuration table and `--help` must say the same.

use crate::common;

use std::process::Command;

use onnx_lambda::config::SETTINGS;

/// Variable names in the first column of the README's configuration table
/// (`| `NAME` (`--flag`) | default | meaning |`).
fn readme_variables() -> Vec<String> {
    let readme = std::fs::read_to_string(common::root().join("README.md")).unwrap();
    let table = readme
        .split("### Configuration")
        .nth(1)
        .expect("README has a Configuration section");
    table
        .lines()
        .skip_while(|l| !l.starts_with("| env"))
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .flat_map(|row| {
            let first = row.split('|').nth(1).unwrap_or("").to_string();
            first
                .split('`')
                .skip(1)
                .step_by(2)
                .filter(|s| {
                    s.chars()
                        .all(|c| c.is_ascii_uppercase() || c == '_' || c.is_ascii_digit())
                })
                .map(String::from)
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn the_readme_documents_exactly_the_variables_the_config_reads() {
    let documented = readme_variables();
    for s in SETTINGS {
        assert!(
            documented.iter().any(|d| d == s.name),
            "{} is read by Config but missing from the README's configuration table",
            s.name
        );
    }
    for d in &documented {
        let sdk_or_logging = d.starts_with("AWS_") || d == "RUST_LOG";
        assert!(
            sdk_or_logging || SETTINGS.iter().any(|s| s.name == d),
            "the README documents {d}, which nothing reads"
        );
    }
}

#[test]
fn help_lists_every_variable_with_its_flag() {
    let out = Command::new(env!("CARGO_BIN_EXE_onnx-lambda"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for s in SETTINGS {
        let line = help
            .lines()
            .find(|l| l.trim_start().starts_with(s.name))
            .unwrap_or_else(|| panic!("--help does not list {}:\n{help}", s.name));
        if let Some(flag) = s.flag {
            assert!(line.contains(flag), "{line}");
        }
    }
}

/// The project's own text files: sources, scripts, build files and docs.
fn project_text_files() -> Vec<std::path::PathBuf> {
    let out = Command::new("git")
        .args(["ls-files", "--cached", "--others", "--exclude-standard"])
        .current_dir(common::root())
        .output()
        .expect("git is installed");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|f| {
            [".rs", ".md", ".sh", ".py", ".toml", ".yaml", ".lua"]
                .iter()
                .any(|e| f.ends_with(e))
                || f.starts_with(".ci/")
        })
        .map(|f| common::root().join(f))
        .filter(|p| p.exists())
        .collect()
}

/// Whether `text` speaks of work sessions: the word on its own, not as
/// part of an AWS name (`AWS_SESSION_TOKEN`, `RoleSessionName`).
fn speaks_of_sessions(text: &str) -> Option<usize> {
    let lower = text.to_lowercase();
    let word = ["ses", "sion"].concat();
    lower.match_indices(&word).map(|(i, _)| i).find(|&i| {
        let before = lower[..i].chars().next_back();
        let after = &lower[i + word.len()..];
        let part_of_name = before.is_some_and(|c| c.is_alphanumeric() || c == '_')
            || after.starts_with(|c: char| c == '_' || c.is_alphanumeric() && c != 's')
            || after.starts_with(" token");
        !part_of_name
    })
}

/// History belongs to git log: the code, README and docs say what is, not
/// who measured what in which sitting.
#[test]
fn the_projects_text_does_not_speak_of_sessions() {
    assert!(speaks_of_sessions("the fourteenth Session's run").is_some());
    assert!(speaks_of_sessions("AWS_SESSION_TOKEN and RoleSessionName").is_none());
    let mut found = Vec::new();
    for path in project_text_files() {
        let rel = path.strip_prefix(common::root()).unwrap().to_path_buf();
        // Scripts and tests may name an ONNX Runtime or AWS session object.
        let in_scope = ["src/", "docs/", "README.md", "Cargo.toml"]
            .iter()
            .any(|p| rel.starts_with(p));
        if !in_scope {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for (n, line) in text.lines().enumerate() {
            if speaks_of_sessions(line).is_some() {
                found.push(format!("{}:{}: {}", rel.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(found.is_empty(), "{}", found.join("\n"));
}

/// Repository paths a text names (`src/ops/dense/mod.rs`, `scripts/test.sh`).
fn named_paths(text: &str) -> Vec<String> {
    const ROOTS: &[&str] = &[
        "src/",
        "tests/",
        "scripts/",
        "docs/",
        "events/",
        "models/",
        "benches/",
        "examples/",
        "fuzz/",
    ];
    const EXTENSIONS: &[&str] = &[
        ".rs", ".py", ".sh", ".md", ".json", ".toml", ".yaml", ".txt", ".lua", ".onnx",
    ];
    let mut out = Vec::new();
    for root in ROOTS {
        for (i, _) in text.match_indices(root) {
            let prev = text[..i].chars().next_back();
            if prev.is_some_and(|c| c.is_alphanumeric() || "_-./".contains(c)) {
                continue;
            }
            let path: String = text[i..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || "_-./".contains(*c))
                .collect();
            let path = path.trim_end_matches('.');
            if EXTENSIONS.iter().any(|e| path.ends_with(e)) && !path.contains("..") {
                out.push(path.to_string());
            }
        }
    }
    out
}

/// Every file a comment or a document names exists: a moved file leaves
/// no pointer to where it was.
#[test]
fn paths_named_in_the_projects_text_exist() {
    assert_eq!(
        named_paths("see `src/ops/dense/mod.rs`, tests/library/docs.rs. and xsrc/a.rs"),
        ["src/ops/dense/mod.rs", "tests/library/docs.rs"]
    );
    let mut missing = Vec::new();
    for path in project_text_files() {
        let rel = path.strip_prefix(common::root()).unwrap().to_path_buf();
        if rel.starts_with("tests/data") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let prose = rel.extension().is_some_and(|e| e == "md");
        for (n, line) in text.lines().enumerate() {
            // In code, only comments: strings hold example paths.
            let t = line.trim_start();
            if !(prose || t.starts_with("//") || t.starts_with('#')) {
                continue;
            }
            for named in named_paths(line) {
                if !common::root().join(&named).exists() {
                    missing.push(format!("{}:{}: {named}", rel.display(), n + 1));
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "named but missing:\n{}",
        missing.join("\n")
    );
}

/// The README is for users; measurements and methods live in docs/.
#[test]
fn the_readme_stays_short_and_points_to_the_docs() {
    let readme = std::fs::read_to_string(common::root().join("README.md")).unwrap();
    let lines = readme.lines().count();
    assert!(
        lines <= 500,
        "README.md has {lines} lines; move detail to docs/"
    );
    for doc in ["docs/performance.md", "docs/operators.md"] {
        assert!(readme.contains(doc), "README.md does not link {doc}");
    }
}
