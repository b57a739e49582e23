//! The deployment template: valid CloudFormation/SAM (`cfn-lint` and
//! `sam validate --lint`, offline), least privilege, the SQS settings AWS
//! advises, alarms and outputs; and it configures the functions only with
//! settings the service reads.

use crate::common;

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

/// One granted resource as the template writes it: a `Fn::Sub` string, a
/// `Fn::GetAtt` as `X.Attr`, a conditional grant's "then" branch.
fn resource_text(r: &Value) -> String {
    if let Some(s) = r.as_str() {
        return s.to_string();
    }
    if let Some(sub) = r.get("Fn::Sub") {
        return sub
            .as_str()
            .unwrap_or_else(|| sub[0].as_str().unwrap())
            .to_string();
    }
    if let Some(att) = r.get("Fn::GetAtt") {
        return format!("{}.{}", att[0].as_str().unwrap(), att[1].as_str().unwrap());
    }
    if let Some(branches) = r.get("Fn::If") {
        return resource_text(&branches[1]);
    }
    panic!("unexpected resource {r}")
}

fn strings(v: &Value) -> Vec<&Value> {
    match v {
        Value::Array(items) => items.iter().collect(),
        one => vec![one],
    }
}

/// Each role's grants, exactly: no wildcard action, no wildcard resource
/// but the input prefix and the log streams, and nothing the function does
/// not need (the IAM-enforced tests in tests/lambda/iam.rs prove it needs
/// each of them).
#[test]
fn roles_are_least_privilege() {
    let t = template();
    let mut grants: std::collections::BTreeSet<(String, String, String)> = Default::default();
    for role in ["PredictRole", "BatchRole", "BatchOperationsRole"] {
        for policy in t["Resources"][role]["Properties"]["Policies"]
            .as_array()
            .unwrap()
        {
            // A conditional policy: its "then" branch.
            let policy = policy.get("Fn::If").map_or(policy, |f| &f[1]);
            for st in policy["PolicyDocument"]["Statement"].as_array().unwrap() {
                assert_eq!(st["Effect"], "Allow", "{role}: {st}");
                for a in strings(&st["Action"]) {
                    let a = a.as_str().unwrap();
                    assert!(!a.contains('*'), "{role}: {a}");
                    for r in strings(&st["Resource"]) {
                        let r = resource_text(r);
                        let wildcard_ok = r.ends_with("${InputPrefix}*")
                            || r.ends_with("Logs.Arn}:*")
                            // S3 Batch Operations: the function's versions,
                            // the manifest anywhere in InputBucket, the
                            // report under its own prefix.
                            || (role == "BatchOperationsRole"
                                && (r.ends_with("${BatchFunction.Arn}:*")
                                    || r.ends_with("${InputBucket}/*")
                                    || r.ends_with("${InputBucket}/batch-reports/*")));
                        assert!(!r.contains('*') || wildcard_ok, "{role}: {a} on {r}");
                        grants.insert((role.to_string(), a.to_string(), r));
                    }
                }
            }
        }
    }
    let s3 = "arn:${AWS::Partition}:s3:::";
    let mut expected: std::collections::BTreeSet<(String, String, String)> = Default::default();
    for (role, logs) in [("PredictRole", "PredictLogs"), ("BatchRole", "BatchLogs")] {
        let mut add = |a: &str, r: String| expected.insert((role.to_string(), a.to_string(), r));
        add("logs:CreateLogStream", format!("${{{logs}.Arn}}:*"));
        add("logs:PutLogEvents", format!("${{{logs}.Arn}}:*"));
        for object in ["${ModelKey}", "${Stem}.json", "${ModelLabelsKey}"] {
            add("s3:GetObject", format!("{s3}${{ModelBucket}}/{object}"));
        }
        add(
            "s3:GetObject",
            format!("{s3}${{InputBucket}}/${{InputPrefix}}*"),
        );
        add("s3:ListBucket", format!("{s3}${{InputBucket}}"));
    }
    // Jobs (and S3 Batch Operations tasks) may pin a version.
    expected.insert((
        "BatchRole".into(),
        "s3:GetObjectVersion".into(),
        format!("{s3}${{InputBucket}}/${{InputPrefix}}*"),
    ));
    let ops = |a: &str, r: String| ("BatchOperationsRole".to_string(), a.to_string(), r);
    expected.insert(ops("lambda:InvokeFunction", "BatchFunction.Arn".into()));
    expected.insert(ops(
        "lambda:InvokeFunction",
        "${BatchFunction.Arn}:*".into(),
    ));
    for a in ["s3:GetObject", "s3:GetObjectVersion"] {
        expected.insert(ops(a, format!("{s3}${{InputBucket}}/*")));
    }
    expected.insert(ops(
        "s3:PutObject",
        format!("{s3}${{InputBucket}}/batch-reports/*"),
    ));
    for a in [
        "sqs:ReceiveMessage",
        "sqs:DeleteMessage",
        "sqs:ChangeMessageVisibility",
        "sqs:GetQueueAttributes",
    ] {
        expected.insert(("BatchRole".into(), a.into(), "JobsQueue.Arn".into()));
    }
    expected.insert((
        "BatchRole".into(),
        "sqs:SendMessage".into(),
        "ResultsQueue.Arn".into(),
    ));
    let extra: Vec<_> = grants.difference(&expected).collect();
    let missing: Vec<_> = expected.difference(&grants).collect();
    assert!(
        extra.is_empty() && missing.is_empty(),
        "granted but not needed: {extra:?}\nneeded but not granted: {missing:?}"
    );
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
    // A job failing transiently gets several attempts, not endless ones.
    let receives = redrive["maxReceiveCount"].as_u64().unwrap();
    assert!((3..=10).contains(&receives), "maxReceiveCount {receives}");
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
    // Every alarm fires on the first message or error, not after a backlog.
    for alarm in ["DeadLetterAlarm", "PredictErrorsAlarm", "BatchErrorsAlarm"] {
        let p = &r[alarm]["Properties"];
        assert_eq!(
            (p["Threshold"].as_u64(), p["ComparisonOperator"].as_str()),
            (Some(0), Some("GreaterThanThreshold")),
            "{alarm}"
        );
        assert_eq!(p["EvaluationPeriods"], 1, "{alarm}");
    }
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
