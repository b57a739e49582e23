#!/usr/bin/env bash
# A local stand-in for the deployed stack: moto (S3 + SQS) on a free port,
# in the background, with every queue template.yaml declares (named
# STACK-LogicalId, with the template's visibility timeout, retention and
# redrive policy), a model bucket holding the bundled model and manifest, and
# an input bucket. Prints the environment for `serve`, `worker`, `submit` and
# `collect`, so that
#
#   eval "$(scripts/local-stack.sh)"
#   onnx-lambda worker --queue "$JOBS_QUEUE_URL" --metrics-addr 127.0.0.1:9090 &
#
# runs the batch path with no AWS account. `kill $MOTO_PID` stops it.
# STACK_NAME (default onnx-lambda) prefixes the names.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh >&2

stack="${STACK_NAME:-onnx-lambda}"
port=$(.venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
log="${TMPDIR:-/tmp}/onnx-lambda-local-stack-$port.log"
nohup .venv/bin/python scripts/moto_server.py -H 127.0.0.1 -p "$port" >"$log" 2>&1 &
moto_pid=$!
for _ in $(seq 1 100); do
  .venv/bin/python -c "import socket; socket.create_connection(('127.0.0.1', $port), 0.2)" 2>/dev/null && break
  kill -0 "$moto_pid" 2>/dev/null || { cat "$log" >&2; echo "moto_server exited" >&2; exit 1; }
  sleep 0.2
done

AWS_ENDPOINT_URL="http://127.0.0.1:$port" AWS_DEFAULT_REGION=us-east-1 AWS_ACCESS_KEY_ID=testing \
AWS_SECRET_ACCESS_KEY=testing STACK="$stack" .venv/bin/python - <<'PY'
import json, os
import boto3
from cfnlint.decode import cfn_yaml

stack = os.environ["STACK"]
template = cfn_yaml.load("template.yaml")
s3 = boto3.client("s3")
sqs = boto3.client("sqs")

models, inputs = f"{stack}-models", f"{stack}-inputs"
for bucket in (models, inputs):
    s3.create_bucket(Bucket=bucket)
for name in ("mobilenetv2-1.0-fp32.onnx", "mobilenetv2-1.0-fp32.json", "synset.txt"):
    s3.upload_file(f"models/{name}", models, f"models/{name}")

# Queues in dependency order: a queue whose redrive target is another queue after it.
queues = {k: v for k, v in template["Resources"].items() if v["Type"] == "AWS::SQS::Queue"}
urls, arns = {}, {}
def create(logical):
    if logical in urls:
        return
    props = queues[logical].get("Properties", {})
    attributes = {}
    for key in ("VisibilityTimeout", "MessageRetentionPeriod", "DelaySeconds", "ReceiveMessageWaitTimeSeconds"):
        if key in props:
            attributes[key] = str(props[key])
    if "RedrivePolicy" in props:
        target = props["RedrivePolicy"]["deadLetterTargetArn"]["Fn::GetAtt"][0]
        create(target)
        attributes["RedrivePolicy"] = json.dumps({
            "deadLetterTargetArn": arns[target],
            "maxReceiveCount": str(props["RedrivePolicy"]["maxReceiveCount"]),
        })
    url = sqs.create_queue(QueueName=f"{stack}-{logical}", Attributes=attributes)["QueueUrl"]
    urls[logical] = url
    arns[logical] = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
for logical in queues:
    create(logical)

exports = {
    "MODEL_URI": f"s3://{models}/models/mobilenetv2-1.0-fp32.onnx",
    "INPUT_BUCKET": inputs,
    "S3_INPUT_ALLOWLIST": f"s3://{inputs}",
    "JOBS_QUEUE_URL": urls["JobsQueue"],
    "RESULTS_QUEUE_URL": urls["ResultsQueue"],
    "DEAD_LETTER_QUEUE_URL": urls["JobsDeadLetterQueue"],
}
for k, v in exports.items():
    print(f"export {k}={v}")
PY
cat <<ENV
export AWS_ENDPOINT_URL=http://127.0.0.1:$port AWS_REGION=us-east-1
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_EC2_METADATA_DISABLED=true
export MOTO_PID=$moto_pid
ENV
echo "# moto (S3 + SQS) at http://127.0.0.1:$port, pid $moto_pid, log $log" >&2
