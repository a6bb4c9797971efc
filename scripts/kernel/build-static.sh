#!/usr/bin/env bash
# Build a statically linked hotsplice for the test guest (which has no libc).
#
# Usage: scripts/kernel/build-static.sh
# Prints the path of a stripped copy of the binary (for the initramfs) on
# stdout; cargo's output goes to stderr.
# Uses the host's x86_64-unknown-linux-gnu target with crt-static (glibc
# static), in its own target directory so the normal build is not
# invalidated by the different RUSTFLAGS. Fails if the result has a
# PT_INTERP (dynamic loader) program header.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/../.." && pwd)"
TARGET=x86_64-unknown-linux-gnu
TDIR="${HOTSPLICE_STATIC_TARGET_DIR:-$REPO/target/static}"
# serialize concurrent runs (parallel tests share the target dir)
mkdir -p "$TDIR"
exec 9>"$TDIR/.build-static.lock"
flock 9
t0=$(date +%s.%N)
(cd "$REPO" && RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --release -p hotsplice-cli --target "$TARGET" --target-dir "$TDIR" >&2)
BIN="$TDIR/$TARGET/release/hotsplice"
[ -x "$BIN" ] || { echo "build-static.sh: no binary at $BIN" >&2; exit 1; }
if LC_ALL=C readelf -lW "$BIN" | grep -q 'INTERP'; then
    echo "build-static.sh: $BIN is dynamically linked (has PT_INTERP)" >&2
    exit 1
fi
# a stripped copy for the initramfs (the release profile keeps debuginfo)
GUEST="$TDIR/hotsplice-guest"
if [ ! -f "$GUEST" ] || [ "$BIN" -nt "$GUEST" ]; then
    strip -o "$GUEST.tmp" "$BIN" && mv "$GUEST.tmp" "$GUEST"
fi
printf 'build-static.sh: static %s (%s; stripped copy %s, %s) in %.1fs\n' "$BIN" \
    "$(du -h "$BIN" | cut -f1)" "$GUEST" "$(du -h "$GUEST" | cut -f1)" \
    "$(echo "$(date +%s.%N) - $t0" | bc)" >&2
echo "$GUEST"
