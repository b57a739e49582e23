#!/usr/bin/env bash
# Builds the Lambda package and deploys template.yaml with the SAM CLI.
# Cannot run in this workplace (no AWS account); README "Deploying to Lambda"
# walks through it from an empty account.
#
#   MODEL_BUCKET=my-models scripts/deploy.sh         # required: the model's bucket
#   optional: STACK_NAME (onnx-lambda), MODEL_KEY (models/mobilenetv2-1.0-fp32.onnx),
#             MODEL_LABELS_KEY (the labels file its manifest names; default:
#             synset.txt beside MODEL_KEY; empty string for a manifest without labels),
#             MODEL_SHA256 (default: the bundled model's, when MODEL_KEY is the default),
#             INPUT_BUCKET, INPUT_PREFIX, ARCH (x86_64 | arm64), MEMORY_SIZE (2048),
#             FUNCTION_URL_AUTH (AWS_IAM | NONE), ALARM_TOPIC_ARN
#   DRY_RUN=1 prints the sam deploy command instead of building and deploying.
set -euo pipefail
cd "$(dirname "$0")/.."

: "${MODEL_BUCKET:?set MODEL_BUCKET to the bucket that holds the model (README: Deploying to Lambda)}"
stack="${STACK_NAME:-onnx-lambda}"
model_key="${MODEL_KEY:-models/mobilenetv2-1.0-fp32.onnx}"
if [ -z "${MODEL_SHA256:-}" ] && [ "$model_key" = models/mobilenetv2-1.0-fp32.onnx ]; then
  MODEL_SHA256=$(sha256sum models/mobilenetv2-1.0-fp32.onnx | cut -d' ' -f1)
fi

# The functions' role may read the labels file only if the template names it.
model_dir=$(dirname "$model_key")
[ "$model_dir" = . ] && labels_default=synset.txt || labels_default="$model_dir/synset.txt"
labels_key="${MODEL_LABELS_KEY-$labels_default}"

overrides=(
  "ModelBucket=$MODEL_BUCKET"
  "ModelKey=$model_key"
  "ModelLabelsKey=$labels_key"
  "Architecture=${ARCH:-x86_64}"
  "MemorySize=${MEMORY_SIZE:-2048}"
  "FunctionUrlAuthType=${FUNCTION_URL_AUTH:-AWS_IAM}"
)
# Optional parameters, only when given (the template's defaults are empty).
for pair in "ModelSha256=${MODEL_SHA256:-}" "InputBucket=${INPUT_BUCKET:-}" \
            "InputPrefix=${INPUT_PREFIX:-}" "AlarmTopicArn=${ALARM_TOPIC_ARN:-}"; do
  [ -n "${pair#*=}" ] && overrides+=("$pair")
done
deploy=(sam deploy --guided --stack-name "$stack" --capabilities CAPABILITY_IAM
        --parameter-overrides "${overrides[@]}")

if [ "${DRY_RUN:-0}" = 1 ]; then
  printf '%q ' "${deploy[@]}"
  echo
  exit 0
fi

if [ -z "${AWS_REGION:-${AWS_DEFAULT_REGION:-}}" ]; then
  echo "error: no AWS region is set: export AWS_REGION (for example AWS_REGION=us-east-1)" >&2
  exit 1
fi
ARCH="${ARCH:-x86_64}" scripts/package.sh --sam
export PATH="$PWD/.venv/bin:$PATH" SAM_CLI_TELEMETRY=0
"${deploy[@]}"
sam list stack-outputs --stack-name "$stack" --output table
