#!/usr/bin/env bash
# The test command: formatting, lints, then every test of the workspace
# (unit tests, real-process ptrace tests, end-to-end patches of running
# programs). Needs root (ptrace of processes the tests start).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings
cargo test --workspace --locked --all-features
