#!/usr/bin/env bash
# Measures `onnx-lambda serve` under concurrent load with wrk (Debian package
# `wrk`): requests/s and p50/p90/p99 latency of POST /predict at concurrency
# 1, 2 and 8, all in one run. A benchmark, not a test.
#   scripts/load_serve.sh [SECONDS] [IMAGE]
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-15}"
export IMAGE="${2:-tests/data/images/grace_hopper.jpg}"
bin="${CARGO_TARGET_DIR:-target}/release/onnx-lambda"
[ -x "$bin" ] || { echo "build first: cargo build --release" >&2; exit 1; }
command -v wrk >/dev/null || { echo "install wrk (apt-get install wrk)" >&2; exit 1; }
out=$(mktemp)
"$bin" serve --addr 127.0.0.1:0 >"$out" 2>/dev/null &
pid=$!
trap 'kill $pid 2>/dev/null || true; rm -f "$out"' EXIT
until grep -q listening "$out"; do sleep 0.1; done
url=$(sed -n 's/^listening on //p' "$out")
until curl -sf "$url/ready" >/dev/null; do sleep 0.1; done
echo "server $url, image $IMAGE, ${secs}s per level, $(nproc) cores"
for c in 1 2 8; do
  t=$(( c < 2 ? 1 : 2 ))
  line=$(wrk -t"$t" -c"$c" -d"${secs}s" --timeout 10s -s scripts/wrk_predict.lua "$url/predict" | sed -n 's/^JSON //p')
  echo "concurrency $c: $line"
done
