#!/usr/bin/env bash
# Builds the Debian package target/debian/hotsplice_VERSION_amd64.deb from
# this tree (works on a clean clone): the release binary, then the man
# pages, shell completions and the ksplice/uptrack-* links generated from
# it into target/deb-assets/, then cargo-deb (pinned, installed once into
# $HOTSPLICE_CACHE/cargo-deb). Prints the path of the package.
# DEB_OUT=DIR writes the package there instead; DEB_BIN=FILE packages that
# hotsplice binary instead of building the release one (the tests use
# their own build).
# `scripts/deb.sh --server` builds hotsplice-server_VERSION_amd64.deb, the
# fleet server's package, the same way, with its man pages (DEB_BIN: a
# hotsplice-server binary).
set -euo pipefail
cd "$(dirname "$0")/.."
server=0
[ "${1:-}" = --server ] && server=1
export HOTSPLICE_CACHE="${HOTSPLICE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/hotsplice}"
CARGO_DEB_VERSION=2.7.0
tools="$HOTSPLICE_CACHE/cargo-deb"
if ! "$tools/bin/cargo-deb" --version 2>/dev/null | grep -q "$CARGO_DEB_VERSION"; then
  mkdir -p "$tools"
  cargo install --locked --quiet "cargo-deb@$CARGO_DEB_VERSION" --root "$tools" >&2
fi
target="${CARGO_TARGET_DIR:-target}"
if [ $server = 1 ]; then
  if [ -n "${DEB_BIN:-}" ]; then
    bin="$DEB_BIN"
  else
    cargo build --release --locked -p hotsplice-server --bin hotsplice-server >&2
    bin="$target/release/hotsplice-server"
  fi
  rm -rf target/deb-assets-server
  mkdir -p target/deb-assets-server
  strip --remove-section=.comment --strip-unneeded -o target/deb-assets-server/hotsplice-server "$bin"
  "$bin" manpages target/deb-assets-server/man >/dev/null
  gzip -9n target/deb-assets-server/man/*.1
  out="${DEB_OUT:-$target/debian}"
  mkdir -p "$out"
  PATH="$tools/bin:$PATH" cargo deb --no-build -p hotsplice-server --output "$out" >&2
  ls -t "$out"/hotsplice-server_*_amd64.deb | head -1
  exit 0
fi
if [ -n "${DEB_BIN:-}" ]; then
  bin="$DEB_BIN"
else
  cargo build --release --locked -p hotsplice-cli --bin hotsplice >&2
  bin="$target/release/hotsplice"
fi
assets="target/deb-assets"
rm -rf "$assets"
mkdir -p "$assets/man" "$assets/completions" "$assets/links" "$assets/keys"
"$bin" manpages "$assets/man" >/dev/null
gzip -9n "$assets"/man/*.8
"$bin" completions bash > "$assets/completions/hotsplice.bash"
"$bin" completions bash --name ksplice > "$assets/completions/ksplice.bash"
"$bin" completions zsh > "$assets/completions/_hotsplice"
"$bin" completions fish > "$assets/completions/hotsplice.fish"
# The release profile keeps line tables (debug = 1) for backtraces in
# development; the package ships the binary stripped, as dh_strip would.
strip --remove-section=.comment --strip-unneeded -o "$assets/hotsplice" "$bin"
for n in ksplice uptrack-upgrade uptrack-install uptrack-remove uptrack-show uptrack-uname; do
  ln -s hotsplice "$assets/links/$n"
done
cat > "$assets/keys/README" <<'KEYS'
Public keys (NAME.pub, made by `hotsplice keygen`) of those whose signed
patches this machine accepts. See /usr/share/doc/hotsplice/configuration.md.
KEYS
out="${DEB_OUT:-$target/debian}"
mkdir -p "$out"
PATH="$tools/bin:$PATH" cargo deb --no-build -p hotsplice-cli --output "$out" >&2
ls -t "$out"/hotsplice_*_amd64.deb | head -1
