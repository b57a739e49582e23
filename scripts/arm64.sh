#!/usr/bin/env bash
# Builds the project for aarch64 (Graviton) on an x86_64 Debian machine and
# tests it under qemu-user:
#   scripts/arm64.sh              what .ci/run runs (below)
#   scripts/arm64.sh FILTER...    the library's unit tests matching FILTER
#   scripts/arm64.sh --no-run     build only
#   scripts/arm64.sh --install    install the toolchain only
# What .ci/run runs, all under qemu:
#   1. the library's unit tests, every operator against its definition at
#      portable and NEON (ONNX_LAMBDA_EXPECT_SIMD=neon: a NEON kernel that
#      did not run fails its test);
#   2. from tests/library: the bundled model's logits against ONNX
#      Runtime's reference tensor, the sample photos' top-5, and the model
#      zoo against ONNX Runtime (scripts/zoo.py; ten architectures);
#   3. `onnx-lambda predict` on the sample photos: the same top-5 as the
#      x86_64 build, probabilities within 1e-4.
# Left out: the servers, AWS and Lambda tests (nothing in them differs by
# architecture, and under emulation they would take most of an hour), and
# two memory tests qemu cannot answer (below). A build with warnings fails.
#
# Installs what it needs when missing: Debian's rustc with its aarch64
# standard library (rustup has none here), the cross linker, the arm64 C
# library for qemu, qemu-user. Its own target directory, so the x86_64
# builds are untouched; dependencies at opt-level 1 there (tract at 3
# doubled the build, and the tests do not time anything).
set -euo pipefail
cd "$(dirname "$0")/.."

target=aarch64-unknown-linux-gnu
if [ ! -d /usr/lib/rustlib/$target ] || ! command -v qemu-aarch64 >/dev/null \
  || ! command -v aarch64-linux-gnu-gcc >/dev/null || [ ! -e /lib/ld-linux-aarch64.so.1 ]; then
  echo "== installing the aarch64 toolchain (Debian packages)"
  dpkg --add-architecture arm64
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q rustc-web libstd-rust-web-dev:arm64 \
    gcc-aarch64-linux-gnu libc6:arm64 qemu-user
fi
[ "${1:-}" = "--install" ] && exit 0

x86_target_dir="${CARGO_TARGET_DIR:-$HOME/.cache/onnx-lambda/target}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR_AARCH64:-$HOME/.cache/onnx-lambda/target-aarch64}"
# Debian's rustc, whose standard library has the aarch64 target.
export RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
# `-L /`: the multiarch arm64 libraries of libc6:arm64. With the cross
# toolchain's sysroot (/usr/aarch64-linux-gnu) every program that starts
# a thread hangs under qemu.
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /"
# C dependencies (ring, for rustls).
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
export ONNX_LAMBDA_EXPECT_SIMD=neon

cargo_a64() {
  local sub=$1
  shift
  cargo "$sub" --locked --target "$target" --config 'profile.dev.package."*".opt-level=1' "$@"
}

# qemu-user answers madvise(MADV_POPULATE_READ) with success without
# mapping anything, and on any range: the tests of the page-population
# helper (memory.rs) and of the mapped model giving its pages back assert
# what the kernel does, so they only mean something on real arm64.
skips=(--skip memory::tests::populate --skip model::parse::tests::a_mapped_model_gives_its_pages_back)

echo "== $(/usr/bin/rustc --version): building for $target ($(date -u +%H:%M:%S))"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo_a64 test --lib --test library --no-run 2>&1 | tee "$log"
cargo_a64 build --bin onnx-lambda 2>&1 | tee -a "$log"
if grep -q '^warning' "$log"; then
  echo "the aarch64 build has warnings (above): the lints hold on every target" >&2
  exit 1
fi
[ "${1:-}" = "--no-run" ] && exit 0

if [ $# -gt 0 ]; then
  cargo_a64 test --lib -- "${skips[@]}" "$@"
  exit 0
fi

echo "== unit tests under qemu ($(date -u +%H:%M:%S))"
cargo_a64 test --lib -- "${skips[@]}"

echo "== logits, photos and the model zoo against ONNX Runtime, under qemu ($(date -u +%H:%M:%S))"
# The zoo test makes its models with .venv's Python (scripts/test.sh).
[ -x .venv/bin/python ] || source scripts/venv.sh
# Five of the zoo's ten families, about a minute and a half under qemu
# (all ten take five minutes): dense 3x3 and 7x7 convolutions with the
# residual in the epilogue (resnet18), concatenated 1x1 and 3x3 branches
# and max pooling (squeezenet1_1), grouped convolutions and
# squeeze-and-excite (regnet_y_400mf), depthwise 3x3 and 5x5 with
# HardSwish (mobilenet_v3_small), channel shuffles and stride-2 depthwise
# (shufflenet_v2_x1_0). Each agrees with ONNX Runtime to 1e-4.
ZOO_MODELS=resnet18,squeezenet1_1,regnet_y_400mf,mobilenet_v3_small,shufflenet_v2_x1_0 \
  cargo_a64 test --test library -- pipeline::logits_match_onnxruntime_within_1e_4 \
  pipeline::every_photo_gets_its_family_and_onnxruntimes_top5 zoo::

echo "== predict on the sample photos: aarch64 under qemu against x86_64 ($(date -u +%H:%M:%S))"
photos=(tests/data/images/*.jpg tests/data/images/*.png)
env -u RUSTC -u RUSTDOC CARGO_TARGET_DIR="$x86_target_dir" cargo build --locked --quiet --bin onnx-lambda
x86="$x86_target_dir/debug/onnx-lambda"
qemu-aarch64 -L / "$CARGO_TARGET_DIR/$target/debug/onnx-lambda" predict "${photos[@]}" >"$log.arm64"
# jpeg-decoder runs an SSSE3 IDCT on x86_64 and its scalar one on aarch64;
# they round some pixels apart, which moves a photo whose top two classes
# are close (grace_hopper.jpg) by up to 5e-4. Against x86_64 without SSSE3
# (qemu's baseline x86_64 CPU) the decode is the same, and everything
# after it must agree to 1e-4; against the native build, the same top-5.
qemu-x86_64 -cpu qemu64 "$x86" predict "${photos[@]}" >"$log.x86"
python3 scripts/same_predictions.py "$log.x86" "$log.arm64" 1e-4
"$x86" predict "${photos[@]}" >"$log.x86"
python3 scripts/same_predictions.py "$log.x86" "$log.arm64" 1e-3
rm -f "$log.x86" "$log.arm64"
