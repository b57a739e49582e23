#!/usr/bin/env bash
# Builds the library's unit tests for aarch64 (Graviton) on an x86_64
# Debian machine and runs them under qemu-user:
#   scripts/arm64.sh [--no-run] [TEST FILTER...]
# Installs what it needs when missing: Debian's rustc with its aarch64
# standard library (rustup has none here), the cross linker, the arm64 C
# library for qemu, qemu-user. Its own target directory, so the x86_64
# builds are untouched. The first build takes about 45 minutes on 2 cores.
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

run=()
if [ "${1:-}" = "--no-run" ]; then
  run=(--no-run)
  shift
fi
# qemu-user answers madvise(MADV_POPULATE_READ) with success without
# mapping anything, and on any range: the tests of the page-population
# helper (memory.rs) and of the mapped model giving its pages back assert
# what the kernel does, so they only mean something on real arm64.
skips=(--skip memory::tests::populate --skip model::parse::tests::a_mapped_model_gives_its_pages_back)
echo "== $(/usr/bin/rustc --version): cargo test --target $target --lib ${run[*]} $* (under qemu: ${skips[*]})"
if [ ${#run[@]} -gt 0 ]; then
  cargo test --locked --target "$target" --lib --no-run
else
  cargo test --locked --target "$target" --lib -- "${skips[@]}" "$@"
fi
