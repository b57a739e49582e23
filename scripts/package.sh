#!/usr/bin/env bash
# Builds the Lambda package with the tools AWS documents for Rust:
#   cargo lambda build --release   (zig links against Amazon Linux's glibc)
#   sam build                      (BuildMethod rust-cargolambda; --sam)
# Both run offline once the crates are fetched, and share one cargo target
# directory, so the second build is only a copy. Prints the bootstrap's and
# the zip's sizes, and the bootstrap's path on the last line (CI hands it to
# tests/lambda/lambda_watch.rs as BOOTSTRAP).
#
#   scripts/package.sh            # x86_64 bootstrap + zip
#   scripts/package.sh --sam      # ... and `sam build` of template.yaml
#   ARCH=arm64 scripts/package.sh # Graviton; needs the aarch64-unknown-linux-gnu
#                                 # target (rustup target add), not available here
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/onnx-lambda/target}"
arch="${ARCH:-x86_64}"

# cargo-lambda (with zig) and the SAM CLI, pinned, in .venv.
source scripts/venv.sh
export PATH="$PWD/.venv/bin:$PATH"

flags=(--release --bin onnx-lambda)
[ "$arch" = arm64 ] && flags+=(--arm64)
echo "== cargo lambda build ${flags[*]}"
cargo lambda build "${flags[@]}"
bootstrap="$CARGO_TARGET_DIR/lambda/onnx-lambda/bootstrap"

if [ "${1:-}" = "--sam" ]; then
  echo "== sam build (template.yaml, BuildMethod rust-cargolambda)"
  SAM_CLI_TELEMETRY=0 sam build --beta-features --parameter-overrides "Architecture=$arch"
  # SAM builds functions with the same code once (PredictFunction-Shared).
  built=(.aws-sam/build/*/bootstrap)
  [ -e "${built[0]}" ] || { echo "sam build produced no bootstrap" >&2; exit 1; }
  for b in "${built[@]}"; do
    cmp "$bootstrap" "$b" || { echo "$b differs from cargo lambda build's bootstrap" >&2; exit 1; }
  done
  echo "sam build: ${built[*]} (identical to $bootstrap)"
fi

zip="$CARGO_TARGET_DIR/lambda/onnx-lambda/bootstrap.zip"
python3 - "$bootstrap" "$zip" <<'PY'
import os, sys, zipfile
src, dst = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
    info = zipfile.ZipInfo("bootstrap", date_time=(1980, 1, 1, 0, 0, 0))
    info.external_attr = 0o755 << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    with open(src, "rb") as f:
        z.writestr(info, f.read(), compresslevel=9)
mib = lambda p: os.path.getsize(p) / 2**20
print(f"bootstrap: {mib(src):.1f} MiB, zipped: {mib(dst):.1f} MiB ({dst})")
PY
echo "$bootstrap"
