#!/usr/bin/env bash
# Installs what hotsplice needs to build and test on a fresh Debian machine:
# a C toolchain (the tests compile real programs; C++ for libFuzzer), make, GNU patch, binutils,
# util-linux (setpriv, for the not-root test), PostgreSQL (the fleet server's tests initdb and start a
# private server; binaries under /usr/lib/postgresql/*/bin). Rust comes from rustup.
set -euo pipefail
need=()
for pkg in gcc g++ make patch binutils util-linux libc6-dev postgresql; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ "${#need[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: missing packages ${need[*]}; run this script as root" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo not found; install Rust with rustup (https://rustup.rs)" >&2
  exit 1
fi
rustup component add clippy rustfmt >/dev/null 2>&1 || true
