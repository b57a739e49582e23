//! The deployment template: valid CloudFormation/SAM (cfn-lint, offline),
//! and it configures the function only with settings the service reads.

mod common;

use std::process::Command;

use common::root;

#[test]
fn cfn_lint_accepts_the_template() {
    let lint = root().join(".venv/bin/cfn-lint");
    let out = Command::new(&lint)
        .arg(root().join("template.yaml"))
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e}; run scripts/test.sh, which installs cfn-lint",
                lint.display()
            )
        });
    assert!(
        out.status.success(),
        "cfn-lint:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn template_sets_only_variables_the_config_knows() {
    let template = std::fs::read_to_string(root().join("template.yaml")).unwrap();
    let mut known: Vec<&str> = onnx_lambda::config::SETTINGS
        .iter()
        .map(|s| s.name)
        .collect();
    known.push("RUST_LOG");
    // Every `Variables:` block, each entry one level deeper than its header.
    let lines: Vec<&str> = template.lines().collect();
    let mut vars: Vec<&str> = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.trim() != "Variables:" {
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        for entry in &lines[i + 1..] {
            if entry.len() - entry.trim_start().len() <= indent {
                break;
            }
            if let Some((k, _)) = entry.trim().split_once(':') {
                vars.push(k);
            }
        }
    }
    assert!(
        vars.contains(&"MODEL_URI") && vars.contains(&"RESULTS_QUEUE_URL"),
        "{vars:?}"
    );
    for v in &vars {
        assert!(known.contains(v), "template sets {v}, which nothing reads");
    }
    // An empty value means "default" to the service: the template's empty
    // parameter defaults must be accepted at start-up.
    let config =
        onnx_lambda::config::Config::from_lookup(|k| vars.contains(&k).then(String::new)).unwrap();
    assert_eq!(config, onnx_lambda::config::Config::default());
}
