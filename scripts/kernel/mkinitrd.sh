#!/usr/bin/env bash
# Build a compressed (zstd) newc-cpio initramfs for the cached Debian kernel.
#
# Usage: scripts/kernel/mkinitrd.sh [-i INIT] [-m "MOD ..."] OUT [SRC[:DEST]]...
#   OUT         output file (e.g. /tmp/initrd.zst)
#   SRC[:DEST]  extra files; DEST is the absolute path inside the initramfs
#               (default: /<basename SRC>). Directories are copied recursively.
#   -i INIT     the /init script (default: tests/kernel/init)
#   -m MODS     kernel modules from the image package to include, with their
#               dependencies, in load order (default: "virtio_pci virtio_blk ext4");
#               listed in /etc/hs-modules, which the default init insmods.
#               Use -m "" for none.
# Contents: static busybox (/bin/busybox + applet symlinks), /init, the
# modules under /lib/modules/$KVER/..., /etc/hs-modules, /etc/hs-kver, extras.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/../.." && pwd)"
# HOTSPLICE_KERNEL_VERSION=6.1.176-1: use that pinned build (fetch.sh PKGVER)
KV="${HOTSPLICE_KERNEL_VERSION:-}"
CACHE="${HOTSPLICE_CACHE:-$REPO/.cache}/kernel${KV:+-${KV%%-*}}"
INIT="$REPO/tests/kernel/init"
MODS="virtio_pci virtio_blk ext4"
while getopts "i:m:" opt; do
    case $opt in
        i) INIT=$OPTARG ;;
        m) MODS=$OPTARG ;;
        *) echo "usage: $0 [-i INIT] [-m MODS] OUT [SRC[:DEST]]..." >&2; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
[ $# -ge 1 ] || { echo "usage: $0 [-i INIT] [-m MODS] OUT [SRC[:DEST]]..." >&2; exit 2; }
OUT=$1; shift
[ -f "$CACHE/.complete" ] || "$REPO/scripts/kernel/fetch.sh" >&2
# shellcheck disable=SC1091
. "$CACHE/env.sh"

STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
mkdir -p "$STAGE"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,tmp,mnt,run,root,lib/modules/"$KVER"}

# busybox and its applets
cp "$BUSYBOX" "$STAGE/bin/busybox"
for app in $("$BUSYBOX" --list-full); do
    [ "$app" = bin/busybox ] && continue
    mkdir -p "$STAGE/$(dirname "$app")"
    ln -sf /bin/busybox "$STAGE/$app"
done

install -m 0755 "$INIT" "$STAGE/init"
echo "$KVER" > "$STAGE/etc/hs-kver"

# kernel modules (with dependencies, in load order, each once)
: > "$STAGE/etc/hs-modules"
for m in $MODS; do
    modprobe -d "$CACHE/root" -S "$KVER" --show-depends "$m" \
        | awk '$1 == "insmod" { print $2 }'
done | awk '!seen[$0]++' | while read -r ko; do
    rel=${ko#"$CACHE/root"}
    mkdir -p "$STAGE/$(dirname "$rel")"
    cp "$ko" "$STAGE/$rel"
    echo "$rel" >> "$STAGE/etc/hs-modules"
done

# extra files
for spec in "$@"; do
    src=${spec%%:*}
    if [ "$src" = "$spec" ]; then dest="/$(basename "$src")"; else dest=${spec#*:}; fi
    mkdir -p "$STAGE/$(dirname "$dest")"
    cp -a "$src" "$STAGE/$dest"
done

mkdir -p "$(dirname "$OUT")"
(cd "$STAGE" && find . -print0 | LC_ALL=C sort -z \
    | cpio --null -o -H newc --owner 0:0 --quiet) | zstd -q -T0 -f -o "$OUT"
echo "mkinitrd.sh: $OUT ($(du -h "$OUT" | cut -f1)), modules: $(wc -l < "$STAGE/etc/hs-modules")" >&2
