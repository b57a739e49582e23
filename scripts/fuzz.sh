#!/usr/bin/env bash
# Coverage-guided fuzzing (cargo-fuzz, libFuzzer) of the parsers that take
# untrusted input: decode + preprocess, SQS job messages, whole HTTP
# requests (including KServe V2 and its binary extension, and s3_uri
# references read from a refusing endpoint), each for a
# bounded time. A crash fails the run and leaves its input under
# fuzz/artifacts/TARGET/; add it as a regression test.
#   scripts/fuzz.sh [SECONDS_PER_TARGET]   (default 20)
#
# Runs on the stable compiler: cargo-fuzz passes flags that need nightly,
# which RUSTC_BOOTSTRAP=1 allows. No sanitizer (-s none): the code is safe
# Rust, and the fuzzer hunts panics, hangs, runaway memory and the oracles
# in src/fuzzing.rs (every answer JSON, never a 5xx for bad input).
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-20}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/onnx-lambda/target}"
export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo install cargo-fuzz --version 0.13.2 --locked
fi

seeds=$(mktemp -d)
trap 'rm -rf "$seeds"' EXIT
python3 - "$seeds" <<'PY'
import base64, json, os, struct, sys, zlib
root = sys.argv[1]
def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
def png(w, h, colour=2):
    raw = b"".join(b"\0" + bytes(((x * 37 + y * 11) & 255 for x in range(w * (3 if colour == 2 else 1)))) for y in range(h))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, colour, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
def bmp(w, h):
    row = (w * 3 + 3) & ~3
    pixels = bytes(row * h)
    return (b"BM" + struct.pack("<IHHI", 54 + len(pixels), 0, 0, 54)
            + struct.pack("<IiiHHIIiiII", 40, w, h, 1, 24, 0, len(pixels), 2835, 2835, 0, 0) + pixels)
gif = b"GIF89a\x02\x00\x02\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff,\x00\x00\x00\x00\x02\x00\x02\x00\x00\x02\x02\x44\x01\x00;"
images = {"tiny.png": png(3, 2), "grey.png": png(4, 4, 0), "tiny.bmp": bmp(2, 2), "tiny.gif": gif}
with open("tests/data/images/grace_hopper.jpg", "rb") as f:
    images["photo.jpg"] = f.read()
def put(target, name, data):
    os.makedirs(os.path.join(root, target), exist_ok=True)
    with open(os.path.join(root, target, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())
for name, data in images.items():
    # The first byte picks full-size (even) or DCT-scaled (odd) decoding.
    put("decode", name, b"\x00" + data)
    put("decode", name + ".scaled", b"\x03" + data)
b64 = base64.b64encode(images["tiny.png"]).decode()
jobs = [{"job_id": "j1", "image": {"base64": b64}, "top_k": 3}, {"image": {"s3_uri": "s3://bucket/in/a.jpg"}},
        {"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
                      "s3": {"bucket": {"name": "photos"}, "object": {"key": "in/my+cat%281%29.jpg"}}}]},
        {"Service": "Amazon S3", "Event": "s3:TestEvent"}]
for i, job in enumerate(jobs):
    put("job_message", f"job{i}.json", json.dumps(job))
header = json.dumps({"inputs": [{"name": "input", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 4 + len(images["tiny.png"])}}]}).encode()
requests = {
    "raw.bin": b"\x00" + images["tiny.png"],
    "json.bin": b"\x01" + json.dumps({"images": [b64, {"image": b64}], "top_k": 2}).encode(),
    "v2-bytes.bin": b"\x03" + json.dumps({"inputs": [{"name": "input", "shape": [1], "datatype": "BYTES", "data": [b64]}],
                                          "outputs": [{"name": "output", "parameters": {"classification": 2}}]}).encode(),
    "v2-binary.bin": b"\x04" + struct.pack("<H", len(header)) + header + struct.pack("<I", len(images["tiny.png"])) + images["tiny.png"],
}
for name, data in requests.items():
    put("http_request", name, data)
PY

cd fuzz
echo "== cargo fuzz build (release, no sanitizer)"
cargo fuzz build -s none -O
for target in decode job_message http_request; do
  echo "== fuzzing $target for ${secs}s"
  corpus="$seeds/$target.corpus"
  mkdir -p "$corpus"
  log="$seeds/$target.log"
  if ! cargo fuzz run -s none -O "$target" "$corpus" "$seeds/$target" -- \
    -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=262144 -print_final_stats=1 >"$log" 2>&1; then
    tail -60 "$log"
    echo "fuzzing $target found a failure: see fuzz/artifacts/$target/" >&2
    exit 1
  fi
  grep -E "^(#[0-9]+ +DONE|stat::number_of_executed_units|stat::new_units_added)" "$log" || tail -5 "$log"
done
