#!/usr/bin/env bash
# The test command: formatting, lints, then every test of the workspace
# (unit tests, real-process ptrace tests, end-to-end patches of running
# programs, kernel patches built from Debian's kernel source and applied in
# that kernel under QEMU), then each fuzz target for FUZZ_SECONDS (default
# 15), and the fleet server's API (schemathesis, API_FUZZ_SECONDS per pass,
# default 30). Needs root (ptrace, module loading in the guest).
#
# Slow downloads and builds (Debian's kernel packages and source, the
# prepared kernel tree) are cached in $HOTSPLICE_CACHE, by default
# ~/.cache/hotsplice, which the scripts create; HOTSPLICE_SKIP_KERNEL_TESTS=1
# leaves the kernel tests out.
set -euo pipefail
cd "$(dirname "$0")/.."
export HOTSPLICE_CACHE="${HOTSPLICE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/hotsplice}"
mkdir -p "$HOTSPLICE_CACHE"
bash scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings
cargo test --workspace --locked --all-features
# The fleet server's API fuzzed against its own OpenAPI document: no 5xx.
API_FUZZ_SECONDS="${API_FUZZ_SECONDS:-30}" bash scripts/api-fuzz.sh
# The parsers of untrusted input, fuzzed for a bounded time per target.
FUZZ_SECONDS="${FUZZ_SECONDS:-15}" bash scripts/fuzz.sh
