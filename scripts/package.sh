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
#   ARCH=arm64 scripts/package.sh # Graviton: Debian's rustc and its aarch64
#                                 # standard library (scripts/arm64.sh installs
#                                 # them), linked by cargo lambda's zig
# Either way the bootstrap must run on Lambda's provided.al2023 runtime:
# the script fails if it needs a glibc symbol newer than that (2.34).
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/onnx-lambda/target}"
arch="${ARCH:-x86_64}"

# cargo-lambda (with zig) and the SAM CLI, pinned, in .venv.
source scripts/venv.sh
# cargo-lambda hands cargo a linker wrapper named after the path of the
# cargo-lambda binary that runs, and cargo rebuilds every crate whose
# linker changed: with .venv inside each clone, a clone's first package
# rebuilt every dependency in the shared target directory (about 15 minutes
# on two cores), and the next package in another clone did it again. A copy
# at one path outside the clones gives every clone the same wrapper; zig
# still comes from .venv, found at link time.
tools="$HOME/.cache/onnx-lambda/tools"
if ! cmp -s .venv/bin/cargo-lambda "$tools/cargo-lambda"; then
  mkdir -p "$tools"
  cp .venv/bin/cargo-lambda "$tools/cargo-lambda.$$"
  mv -f "$tools/cargo-lambda.$$" "$tools/cargo-lambda"
fi
export PATH="$tools:$PWD/.venv/bin:$PATH"

flags=(--release --bin onnx-lambda)
if [ "$arch" = arm64 ]; then
  flags+=(--arm64)
  # rustup's toolchain has no aarch64 standard library here and cannot
  # get one: Debian's rustc has it (scripts/arm64.sh installs it). cargo
  # lambda asks rustup whether the target is installed, and would try to
  # add it: this rustup answers that it is.
  [ -d /usr/lib/rustlib/aarch64-unknown-linux-gnu ] || scripts/arm64.sh --install
  export RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc
  rustup_shim=$(mktemp -d)
  trap 'rm -rf "$rustup_shim"' EXIT
  printf '#!/bin/sh\necho aarch64-unknown-linux-gnu\n' >"$rustup_shim/rustup"
  chmod +x "$rustup_shim/rustup"
  export RUSTUP="$rustup_shim/rustup"
fi
echo "== cargo lambda build ${flags[*]}"
cargo lambda build "${flags[@]}"
bootstrap="$CARGO_TARGET_DIR/lambda/onnx-lambda/bootstrap"

command -v readelf >/dev/null || { apt-get update -q && apt-get install -y -q binutils; }
# provided.al2023 has glibc 2.34: a bootstrap that needs a newer symbol
# version would fail to start there with "GLIBC_2.xx not found".
glibc=$(readelf --version-info --wide "$bootstrap" | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1)
machine=$(readelf --file-header "$bootstrap" | sed -n 's/^ *Machine: *//p')
echo "bootstrap: $machine, needs ${glibc:-no versioned glibc symbol}"
case "$arch:$machine" in
  x86_64:*X86-64* | arm64:AArch64) ;;
  *) echo "$bootstrap is for $machine, not $arch" >&2; exit 1 ;;
esac
if [ -n "$glibc" ] && [ "$(printf '%s\nGLIBC_2.34\n' "$glibc" | sort -V | tail -1)" != GLIBC_2.34 ]; then
  echo "$bootstrap needs $glibc, newer than provided.al2023's 2.34" >&2
  exit 1
fi

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
