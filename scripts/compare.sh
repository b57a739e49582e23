#!/usr/bin/env bash
# Same-run comparison of onnx-lambda with the Python pipeline (Pillow + NumPy
# + ONNX Runtime) on both photo sets; prints the markdown table the README
# shows. Usage:
#
#   scripts/compare.sh [--rounds 3] [--iterations 10]
#   scripts/compare.sh --zoo [--rounds 2] [--simd avx2] [--models a,b]
#
# --zoo: the model zoo (scripts/zoo.py, generated into
# ~/.cache/onnx-lambda/zoo if missing) against ONNX Runtime instead, one
# row per model (scripts/zoo_compare.py).
#
# Builds the release binary (shared target dir) and .venv-bench if missing.
# For the cold start with the model on S3 it also uses .venv's moto (made by
# scripts/test.sh); without it that row is left out.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/onnx-lambda/target}"
cargo build --release --locked --quiet
if [ ! -x .venv-bench/bin/python ]; then
  python3 -m venv .venv-bench
  .venv-bench/bin/pip install --quiet -r scripts/requirements-bench.txt
fi
if [ "${1:-}" = "--zoo" ]; then
  shift
  .venv-bench/bin/pip install --quiet onnx==1.23.2
  .venv-bench/bin/python scripts/zoo.py >/dev/null
  exec .venv-bench/bin/python scripts/zoo_compare.py \
    --binary "$CARGO_TARGET_DIR/release/onnx-lambda" "$@"
fi
exec .venv-bench/bin/python scripts/compare.py \
  --binary "$CARGO_TARGET_DIR/release/onnx-lambda" \
  --python .venv-bench/bin/python "$@"
