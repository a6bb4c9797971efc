#!/usr/bin/env bash
# Build an out-of-tree kernel module against the cached Debian headers.
#
# Usage: scripts/kernel/build-module.sh SRCDIR [OUTDIR]
#   SRCDIR  directory with a kbuild Makefile/Kbuild and the sources
#   OUTDIR  build directory (default: $CACHE/kernel/build/<basename SRCDIR>);
#           SRCDIR is copied there so the source tree stays clean.
# Prints the absolute paths of the built .ko files on stdout (one per line);
# build logs go to stderr.
#
# Runs scripts/kernel/fetch.sh first if the cache is not ready.
# Equivalent to: make -C $CACHE/kernel/root/usr/src/linux-headers-$KVER M=OUTDIR modules
# The arch headers tree (linux-headers-$KVER-amd64) and the common tree
# (linux-headers-$ABI-common) are extracted into the same root, so their
# relative symlinks (scripts -> ../../lib/linux-kbuild-6.1/scripts) resolve
# inside the cache; fetch.sh rewrote the one absolute reference
# (Makefile: include /usr/src/linux-headers-$ABI-common/Makefile).
set -euo pipefail
REPO="$(cd "$(dirname "$0")/../.." && pwd)"
# HOTSPLICE_KERNEL_VERSION=6.1.176-1: use that pinned build (fetch.sh PKGVER)
KV="${HOTSPLICE_KERNEL_VERSION:-}"
CACHE="${HOTSPLICE_CACHE:-$REPO/.cache}/kernel${KV:+-${KV%%-*}}"
[ $# -ge 1 ] || { echo "usage: $0 SRCDIR [OUTDIR]" >&2; exit 2; }
SRC="$(cd "$1" && pwd)"
[ -f "$CACHE/.complete" ] || "$REPO/scripts/kernel/fetch.sh" >&2
# shellcheck disable=SC1091
. "$CACHE/env.sh"
OUT="${2:-$CACHE/build/$(basename "$SRC")}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
if [ "$OUT" != "$SRC" ]; then
    # copy sources (not build products) into the build dir
    (cd "$SRC" && find . -maxdepth 1 -type f \( -name '*.c' -o -name '*.h' -o -name 'Makefile' \
        -o -name 'Kbuild' -o -name '*.S' -o -name '*.lds' \) -exec cp -p {} "$OUT/" \;)
fi
t0=$(date +%s.%N)
# Debian's headers set CC = gcc-12 (.kernelvariables), the compiler the kernel
# was built with (CONFIG_CC_VERSION_TEXT).
make -C "$KDIR" M="$OUT" -j"$(nproc)" modules >&2
t1=$(date +%s.%N)
printf 'build-module.sh: built %s in %.1fs\n' "$(basename "$SRC")" "$(echo "$t1 - $t0" | bc)" >&2
found=0
for ko in "$OUT"/*.ko; do
    [ -f "$ko" ] || continue
    found=1
    echo "$ko"
done
[ $found = 1 ] || { echo "build-module.sh: no .ko produced" >&2; exit 1; }
