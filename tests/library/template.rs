//! The deployment template: valid CloudFormation/SAM (`cfn-lint` and
//! `sam validate --lint`, offline), least privilege, the SQS settings AWS
//! advises, alarms and outputs; and it configures the functions only with
//! settings the service reads.

mod common;

use std::process::Command;

use common::{root, template};
use serde_json::{json, Value};

#[test]
fn sam_validate_lint_accepts_the_template() {
    let sam = root().join(".venv/bin/sam");
    let out = Command::new(&sam)
        .args(["validate", "--lint", "--region", "us-east-1", "--template"])
        .arg(root().join("template.yaml"))
        .env("SAM_CLI_TELEMETRY", "0")
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e}; run scripts/test.sh, which installs aws-sam-cli",
                sam.display()
            )
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.contains("is a valid SAM Template"),
        "{text}"
    );
}

/// Every IAM statement names its actions and resources: no wildcard action,
/// no `*` resource, and each grant is the one the function needs.
#[test]
fn roles_are_least_privilege() {
    let t = template();
    let mut grants: Vec<(String, String, String)> = Vec::new();
    for role in ["PredictRole", "BatchRole"] {
        for policy in t["Resources"][role]["Properties"]["Policies"]
            .as_array()
            .unwrap()
        {
            // A conditional policy: its "then" branch.
            let policy = policy.get("Fn::If").map_or(policy, |f| &f[1]);
            for st in policy["PolicyDocument"]["Statement"].as_array().unwrap() {
                let actions = match &st["Action"] {
                    Value::String(a) => vec![a.clone()],
                    v => v
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|a| a.as_str().unwrap().to_string())
                        .collect(),
                };
                let resource = st["Resource"].to_string();
                assert_ne!(resource, "\"*\"", "{role}: {st}");
                for a in actions {
                    assert!(!a.contains('*'), "{role}: {a}");
                    grants.push((role.to_string(), a, resource.clone()));
                }
            }
        }
    }
    let has = |role: &str, action: &str, resource: &str| {
        grants
            .iter()
            .any(|(r, a, res)| r == role && a == action && res.contains(resource))
    };
    for role in ["PredictRole", "BatchRole"] {
        assert!(
            has(role, "s3:GetObject", "${ModelBucket}/${ModelKey}"),
            "{grants:?}"
        );
        assert!(
            has(role, "s3:GetObject", "${InputBucket}/${InputPrefix}*"),
            "{grants:?}"
        );
    }
    assert!(has("BatchRole", "sqs:SendMessage", "ResultsQueue"));
    let sends: Vec<_> = grants
        .iter()
        .filter(|(_, a, _)| a == "sqs:SendMessage")
        .collect();
    assert_eq!(
        sends.len(),
        1,
        "only the batch function sends, to the results queue: {sends:?}"
    );
    assert!(has("BatchRole", "sqs:ReceiveMessage", "JobsQueue"));
    assert!(!grants
        .iter()
        .any(|(r, a, _)| r == "PredictRole" && a.starts_with("sqs:")));
}

#[test]
fn the_jobs_queue_follows_aws_advice_for_sqs_event_sources() {
    let t = template();
    let r = &t["Resources"];
    let timeout = r["BatchFunction"]["Properties"]["Timeout"]
        .as_u64()
        .unwrap();
    let window_max = t["Parameters"]["JobsBatchingWindowSeconds"]["MaxValue"]
        .as_u64()
        .unwrap();
    let visibility = r["JobsQueue"]["Properties"]["VisibilityTimeout"]
        .as_u64()
        .unwrap();
    assert!(
        visibility >= 6 * timeout + window_max,
        "{visibility} < 6 x {timeout} + {window_max}"
    );
    let redrive = &r["JobsQueue"]["Properties"]["RedrivePolicy"];
    assert_eq!(
        redrive["deadLetterTargetArn"],
        json!({"Fn::GetAtt": ["JobsDeadLetterQueue", "Arn"]})
    );
    let source = &r["BatchFunction"]["Properties"]["Events"]["Jobs"]["Properties"];
    assert_eq!(
        source["FunctionResponseTypes"],
        json!(["ReportBatchItemFailures"])
    );
    for (key, param) in [
        ("BatchSize", "JobsBatchSize"),
        (
            "MaximumBatchingWindowInSeconds",
            "JobsBatchingWindowSeconds",
        ),
    ] {
        assert_eq!(source[key], json!({"Ref": param}), "{key}");
    }
    let concurrency = &source["ScalingConfig"]["MaximumConcurrency"];
    assert_eq!(concurrency, &json!({"Ref": "JobsMaximumConcurrency"}));
}

#[test]
fn alarms_outputs_and_architecture_are_declared() {
    let t = template();
    let r = &t["Resources"];
    let dlq = &r["DeadLetterAlarm"]["Properties"];
    assert_eq!(dlq["MetricName"], "ApproximateNumberOfMessagesVisible");
    assert_eq!(
        dlq["Dimensions"][0]["Value"],
        json!({"Fn::GetAtt": ["JobsDeadLetterQueue", "QueueName"]})
    );
    for (alarm, function) in [
        ("PredictErrorsAlarm", "PredictFunction"),
        ("BatchErrorsAlarm", "BatchFunction"),
    ] {
        let p = &r[alarm]["Properties"];
        assert_eq!(
            (p["Namespace"].as_str(), p["MetricName"].as_str()),
            (Some("AWS/Lambda"), Some("Errors"))
        );
        assert_eq!(p["Dimensions"][0]["Value"], json!({"Ref": function}));
    }
    for output in [
        "ApiUrl",
        "FunctionUrl",
        "JobsQueueUrl",
        "ResultsQueueUrl",
        "DeadLetterQueueUrl",
    ] {
        assert!(t["Outputs"][output]["Value"].is_object(), "output {output}");
    }
    assert_eq!(
        t["Parameters"]["Architecture"]["AllowedValues"],
        json!(["x86_64", "arm64"])
    );
    assert_eq!(
        t["Globals"]["Function"]["Architectures"],
        json!([{"Ref": "Architecture"}])
    );
    assert_eq!(t["Globals"]["Function"]["Runtime"], "provided.al2023");
}

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

/// Regression: `cargo lambda build` adds `--config profile.release.panic="abort"`
/// unless `[profile.release]` names a panic strategy, and the package built
/// that way died on a panic that `classify.rs` contains to one image (an
/// SQS batch then failed whole). The strategy must stay named, as unwind.
#[test]
fn the_release_profile_names_unwind_for_cargo_lambda() {
    let manifest = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    let release: Vec<&str> = manifest
        .lines()
        .skip_while(|l| l.trim() != "[profile.release]")
        .skip(1)
        .take_while(|l| !l.starts_with('['))
        .map(str::trim)
        .collect();
    assert!(release.contains(&"panic = \"unwind\""), "{release:?}");
}
