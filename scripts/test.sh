#!/usr/bin/env bash
# The whole test suite, as README.md documents it. Works on a fresh machine
# with the Rust toolchain: everything else it needs it installs or starts.
set -euo pipefail
cd "$(dirname "$0")/.."

# Share one build directory between clones and CI runs (a clean build of
# tract takes most of ten minutes on two cores).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/onnx-lambda/target}"

cargo test --locked "$@"
