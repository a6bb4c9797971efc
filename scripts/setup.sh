#!/usr/bin/env bash
# Installs what hotsplice needs to build and test on a fresh Debian machine:
# a C toolchain (the tests compile real programs; C++ for libFuzzer), make, GNU patch, binutils,
# util-linux (setpriv, for the not-root test), curl and python3-venv (scripts/api-fuzz.sh), PostgreSQL (the fleet server's tests initdb and start a
# private server; binaries under /usr/lib/postgresql/*/bin), man-db, zsh and fish (the man pages and completions
# are rendered and loaded by the tests), lintian and dpkg-dev (the Debian package; dpkg-source and dpkg-scansources
# for create --source-package's test), build-essential (dpkg-checkbuilddeps requires it), debootstrap (the Debian 12
# system the package is tested in under QEMU). Rust comes from rustup.
set -euo pipefail
need=()
# chromium (and node with npm, unless installed already): the dashboard's browser test (playwright-core drives Debian's chromium).
node_pkgs=""
command -v npm >/dev/null 2>&1 || node_pkgs="nodejs npm"
for pkg in gcc g++ make patch binutils util-linux libc6-dev build-essential curl python3-venv postgresql man-db zsh fish lintian dpkg-dev debootstrap chromium $node_pkgs; do
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
# schemathesis (PyPI), which fuzzes hotsplice-server's API against its own
# OpenAPI document (scripts/api-fuzz.sh), in a virtualenv of the cache.
if [ -n "${HOTSPLICE_CACHE:-}" ]; then
  venv="$HOTSPLICE_CACHE/venv"
  if ! "$venv/bin/schemathesis" --version 2>/dev/null | grep -q "4.32.5"; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q "schemathesis==4.32.5"
  fi
  # prometheus_client: the server's /metrics test parses with Prometheus'
  # own Python parser; jsonschema: the VEX test validates against CSAF 2.0.
  if ! "$venv/bin/python" -c "import prometheus_client, jsonschema" 2>/dev/null; then
    "$venv/bin/pip" install -q "prometheus_client==0.21.1" "jsonschema==4.23.0"
  fi
  # playwright-core (npm, no browser download): the dashboard's browser test.
  node_dir="$HOTSPLICE_CACHE/node"
  if [ ! -f "$node_dir/node_modules/playwright-core/package.json" ] ||
     ! grep -q '"version": "1.49.1"' "$node_dir/node_modules/playwright-core/package.json"; then
    mkdir -p "$node_dir"
    npm install --prefix "$node_dir" --no-audit --no-fund --silent "playwright-core@1.49.1"
  fi
fi
# cargo-deb (pinned), which scripts/deb.sh and the package test use, in the cache.
if [ -n "${HOTSPLICE_CACHE:-}" ]; then
  if ! "$HOTSPLICE_CACHE/cargo-deb/bin/cargo-deb" --version 2>/dev/null | grep -q "2.7.0"; then
    cargo install --locked --quiet "cargo-deb@2.7.0" --root "$HOTSPLICE_CACHE/cargo-deb"
  fi
fi
