#!/usr/bin/env bash
# Same-run comparison of onnx-lambda with the Python pipeline (Pillow + NumPy
# + ONNX Runtime) on both photo sets; prints the markdown table the README
# shows. Usage:
#
#   scripts/compare.sh [--avx2-only] [--rounds 3] [--iterations 10]
#   scripts/compare.sh --zoo [--avx2-only] [--rounds 2] [--simd avx2] [--models a,b]
#
# --zoo: the model zoo (scripts/zoo.py, generated into
# ~/.cache/onnx-lambda/zoo if missing) against ONNX Runtime instead, one
# row per model (scripts/zoo_compare.py).
#
# --avx2-only: both sides see a CPU without AVX-512 (scripts/avx2_only.c,
# built with gcc and preloaded; it needs CPUID faulting, flag cpuid_fault),
# so that an AVX-512 machine measures the AVX2 code of both, the level
# Lambda's x86_64 guarantees. `--simd avx2` alone limits only onnx-lambda.
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
args=() zoo=false
for a in "$@"; do
  case "$a" in
    --zoo) zoo=true ;;
    --avx2-only)
      grep -qw cpuid_fault /proc/cpuinfo || {
        echo "--avx2-only needs CPUID faulting (cpuid_fault in /proc/cpuinfo)" >&2
        exit 2
      }
      shim="$HOME/.cache/onnx-lambda/avx2_only.so"
      mkdir -p "$(dirname "$shim")"
      gcc -O2 -Wall -Werror -shared -fPIC -o "$shim" scripts/avx2_only.c
      export LD_PRELOAD="$shim" ONNX_LAMBDA_AVX2_ONLY=1
      export GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX512F,-AVX512VL,-AVX512BW,-AVX512DQ,-AVX512CD
      ;;
    *) args+=("$a") ;;
  esac
done
set -- ${args[@]+"${args[@]}"}
if $zoo; then
  .venv-bench/bin/pip install --quiet onnx==1.23.2
  .venv-bench/bin/python scripts/zoo.py >/dev/null
  exec .venv-bench/bin/python scripts/zoo_compare.py \
    --binary "$CARGO_TARGET_DIR/release/onnx-lambda" "$@"
fi
exec .venv-bench/bin/python scripts/compare.py \
  --binary "$CARGO_TARGET_DIR/release/onnx-lambda" \
  --python .venv-bench/bin/python "$@"
