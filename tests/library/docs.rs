//! The environment variables are listed once, in `config::SETTINGS`; the
//! README's configuration table and `--help` must say the same.

mod common;

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
