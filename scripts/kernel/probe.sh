#!/usr/bin/env bash
# Record the guest kernel's facts that `hotsplice create --kernel` needs,
# by booting it once (skipped when cached):
#   $CACHE/kernel/probe/build-id   GNU build-id (hex) from /sys/kernel/notes
#   $CACHE/kernel/probe/release    uname -r
#   $CACHE/kernel/probe/kallsyms   /proc/kallsyms read as root, with the
#                                  modules of the test initramfs loaded
#                                  (virtio, ext4); addresses are KASLR-
#                                  randomised: only names, order, types count
# Prints build-id and release, and the path of the probe directory.
#
# Usage: scripts/kernel/probe.sh [-f]     (-f: probe again even if cached)
# The guest writes the files to a scratch ext4 disk (faster and safer than
# pushing ~10 MB through the serial console); they are read back with debugfs.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/../.." && pwd)"
# HOTSPLICE_KERNEL_VERSION=6.1.176-1: use that pinned build (fetch.sh PKGVER)
KV="${HOTSPLICE_KERNEL_VERSION:-}"
CACHE="${HOTSPLICE_CACHE:-$REPO/.cache}/kernel${KV:+-${KV%%-*}}"
FORCE=0
[ "${1:-}" = -f ] && FORCE=1
[ -f "$CACHE/.complete" ] || "$REPO/scripts/kernel/fetch.sh" >&2
# shellcheck disable=SC1091
. "$CACHE/env.sh"
P="$CACHE/probe"
mkdir -p "$CACHE"
exec 8>"$CACHE/.probe.lock"
flock 8
if [ $FORCE = 1 ] || [ ! -f "$P/.complete" ] || [ "$(cat "$P/release" 2>/dev/null)" != "$KVER" ]; then
    W=$(mktemp -d)
    trap 'rm -rf "$W"' EXIT
    "$REPO/scripts/kernel/mkinitrd.sh" "$W/initrd.zst" "$REPO/tests/kernel/scenarios:/tests" >&2
    "$REPO/scripts/kernel/mkdisk.sh" "$W/disk.img" 64
    "$REPO/scripts/kernel/boot.sh" -t 300 -d "$W/disk.img" -l "$W/serial.log" \
        -a "hstest=probe" "$W/initrd.zst" >&2
    grep -q '^HSTEST scenario-exit probe=0' <(tr -d '\r' < "$W/serial.log") \
        || { echo "probe.sh: probe scenario failed (log $W/serial.log)" >&2; trap - EXIT; exit 1; }
    rm -rf "$P.new"; mkdir -p "$P.new"
    for f in build-id release kallsyms; do
        debugfs -R "dump /probe/$f $P.new/$f" "$W/disk.img" >/dev/null 2>&1
        [ -s "$P.new/$f" ] || { echo "probe.sh: cannot read /probe/$f from the disk" >&2; exit 1; }
    done
    grep -Eqx '[0-9a-f]{40}' "$P.new/build-id" || { echo "probe.sh: bad build-id: $(cat "$P.new/build-id")" >&2; exit 1; }
    touch "$P.new/.complete"
    rm -rf "$P"; mv "$P.new" "$P"
fi
echo "build-id=$(cat "$P/build-id")"
echo "release=$(cat "$P/release")"
echo "kallsyms=$P/kallsyms ($(wc -l < "$P/kallsyms") symbols)"
echo "probe-dir=$P"
