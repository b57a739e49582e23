#!/usr/bin/env bash
# The whole test suite, as README.md documents it. Works on a fresh machine
# with the Rust toolchain and python3: it installs what the tests need into
# .venv and starts the servers they use.
set -euo pipefail
cd "$(dirname "$0")/.."

# Share one build directory between clones and CI runs (a clean build of
# tract and the AWS SDK takes most of twenty minutes on two cores).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/onnx-lambda/target}"

# Python test tools, pinned, in .venv.
source scripts/venv.sh

# The Lambda package, built as a user builds it (cargo lambda build --release,
# then sam build, which reuses that build). tests/lambda/lambda_watch.rs runs this
# very bootstrap under `cargo lambda watch`. SKIP_PACKAGE=1 skips the release
# build while iterating; the test then runs the debug binary.
if [ "${SKIP_PACKAGE:-0}" != 1 ]; then
  scripts/package.sh --sam
  export BOOTSTRAP="$CARGO_TARGET_DIR/lambda/onnx-lambda/bootstrap"
fi

# One moto server for the whole run on a free loopback port, stopped on exit
# (scripts/moto_server.py: moto with its SQS queue changes locked).
# Tests read MOTO_ENDPOINT (without it, each test binary starts its own).
port=$(.venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
moto_log="${TMPDIR:-/tmp}/onnx-lambda-moto-$port.log"
.venv/bin/python scripts/moto_server.py -H 127.0.0.1 -p "$port" >"$moto_log" 2>&1 &
moto_pid=$!
trap 'kill "$moto_pid" 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  if .venv/bin/python -c "import socket; socket.create_connection(('127.0.0.1', $port), 0.2)" 2>/dev/null; then
    break
  fi
  kill -0 "$moto_pid" 2>/dev/null || { cat "$moto_log"; echo "moto_server exited" >&2; exit 1; }
  sleep 0.2
done
export MOTO_ENDPOINT="http://127.0.0.1:$port"
echo "== moto server at $MOTO_ENDPOINT (log: $moto_log)"

# The library's unit tests and the four integration test binaries (tests/*/
# by what they start); examples and benches are type-checked by clippy in
# CI, not linked here. There are no doctests.
echo "== cargo test ($(date -u +%H:%M:%S))"
if [ $# -eq 0 ]; then
  set -- --lib --bins --tests
fi
cargo test --locked "$@"
