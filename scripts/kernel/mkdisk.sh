#!/usr/bin/env bash
# Create an empty ext4 disk image for the guest's persistent state
# (attached by boot.sh -d as a virtio disk, /dev/vda, mounted by the init at /mnt).
#
# Usage: scripts/kernel/mkdisk.sh IMG [SIZE_MB]   (default 32 MB; overwrites IMG)
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 IMG [SIZE_MB]" >&2; exit 2; }
IMG=$1; SIZE=${2:-32}
mkdir -p "$(dirname "$IMG")"
rm -f "$IMG"
truncate -s "${SIZE}M" "$IMG"
mkfs.ext4 -q -F -L hsstate "$IMG"
