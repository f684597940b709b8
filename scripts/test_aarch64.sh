#!/usr/bin/env bash
# The AArch64 kernels (src/kernels/aarch64/: NEON, with and without sdot), tested on an x86
# machine: the library's tests (every kernel level against the portable code) and the
# reference tests (logits of every RWKV version against the official package's), built for
# aarch64-unknown-linux-gnu and run under qemu-aarch64 (user mode; its default CPU has the dot
# products, so both levels run). Correctness only: an emulator's timings say nothing.
#
#   scripts/test_aarch64.sh             run (the cross tools must be there)
#   scripts/test_aarch64.sh --setup     install them first: rustup's aarch64 standard library,
#                                       Debian's qemu-user, gcc-aarch64-linux-gnu and
#                                       libc6-dev-arm64-cross (apt-get, as root)
#   scripts/test_aarch64.sh --setup --optional
#                                       as --setup, but exit 0 with a "skipped" line when the
#                                       tools cannot be installed (CI: only package registries
#                                       are reachable); a failing test still fails
set -euo pipefail
cd "$(dirname "$0")/.."

setup=0 optional=0
for a in "$@"; do
    case $a in
    --setup) setup=1 ;;
    --optional) optional=1 ;;
    *) echo "usage: $0 [--setup [--optional]]" >&2; exit 2 ;;
    esac
done

unavailable() {
    if [ "$optional" = 1 ]; then
        echo "skipped: $1"
        exit 0
    fi
    echo "error: $1" >&2
    exit 1
}

target=aarch64-unknown-linux-gnu
if [ "$setup" = 1 ]; then
    if ! rustup target list --installed 2>/dev/null | grep -qx "$target"; then
        timeout 600 rustup target add "$target" || unavailable "rustup target add $target failed"
    fi
    if ! command -v qemu-aarch64 >/dev/null || ! command -v aarch64-linux-gnu-gcc >/dev/null; then
        pkgs=(qemu-user gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
        export DEBIAN_FRONTEND=noninteractive
        timeout 900 apt-get install -y -q "${pkgs[@]}" >/dev/null ||
            { timeout 600 apt-get update -q >/dev/null &&
                timeout 900 apt-get install -y -q "${pkgs[@]}" >/dev/null; } ||
            unavailable "apt-get install ${pkgs[*]} failed"
    fi
fi
rustup target list --installed 2>/dev/null | grep -qx "$target" ||
    unavailable "the $target standard library is not installed (--setup installs it)"
for tool in qemu-aarch64 aarch64-linux-gnu-gcc; do
    command -v "$tool" >/dev/null || unavailable "$tool not found (--setup installs it)"
done

export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export CXX_aarch64_unknown_linux_gnu=aarch64-linux-gnu-g++
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu"

echo "-- clippy ($target)"
cargo clippy --release --target "$target" --lib -- -D warnings
echo "-- library and reference tests ($target, NEON with sdot where qemu's CPU has it)"
cargo test --release --target "$target" --lib --test reference
echo "-- reference tests ($target, RWKV_NO_VNNI=1: NEON without sdot)"
RWKV_NO_VNNI=1 cargo test --release --target "$target" --test reference
