#!/usr/bin/env bash
# A Debian 12 root file system image for the package test: debootstrap
# (minbase plus systemd) from Debian's mirror (the one apt is configured
# with), the stock kernel's modules (the kernel tests' cache), a serial
# console, and hstest.service, which runs /hstest/run.sh after
# multi-user.target when that file exists. Offline: no package lists. Cached in
# $HOTSPLICE_CACHE/debian12/ (root/, base.img); prints the image path.
# Also builds the initramfs that mounts it (initrd.zst, printed second).
set -euo pipefail
REPO="$(cd "$(dirname "$0")/../.." && pwd)"
export HOTSPLICE_CACHE="${HOTSPLICE_CACHE:-$REPO/.cache}"
D="$HOTSPLICE_CACHE/debian12"
KC="$HOTSPLICE_CACHE/kernel"
mkdir -p "$D"
# One build at a time (the Debian and the Xen dom0 tests run in parallel).
exec 9>"$D/.lock"
flock 9
[ -f "$KC/.complete" ] || "$REPO/scripts/kernel/fetch.sh" >&2
# shellcheck disable=SC1091
. "$KC/env.sh"
# Only the files apt itself reads (a `*.disabled` copy or another vendor's
# repository, e.g. nodesource, is no Debian mirror), and only a Debian
# archive: its path ends in /debian.
mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null \
  | grep -oE '^(URIs:|deb) +https?://[^ ]+' | awk '{print $2}' | grep -v security \
  | grep -E '/debian/?$' | head -1 || true)
mirror=${mirror:-http://deb.debian.org/debian}
if [ ! -f "$D/root/.complete" ]; then
  command -v debootstrap >/dev/null || { echo "mkroot.sh: debootstrap missing (scripts/setup.sh installs it)" >&2; exit 1; }
  rm -rf "$D/root.tmp"
  debootstrap --variant=minbase --include=systemd,systemd-sysv,udev,kmod,init-system-helpers,procps \
    bookworm "$D/root.tmp" "$mirror" >&2
  rm -rf "$D/root"
  mv "$D/root.tmp" "$D/root"
  touch "$D/root/.complete"
fi
stamp="$KVER $(sha256sum "$0" "$REPO/scripts/debian/init-switchroot" | sha256sum | cut -c1-16)"
if [ ! -f "$D/base.img" ] || [ "$(cat "$D/base.stamp" 2>/dev/null)" != "$stamp" ]; then
  R="$D/root"
  rm -rf "$R/lib/modules"
  mkdir -p "$R/lib/modules"
  cp -a "$MODDIR" "$R/lib/modules/"
  depmod -b "$R" "$KVER"
  echo hstest > "$R/etc/hostname"
  echo "/dev/vda / ext4 rw,errors=remount-ro 0 1" > "$R/etc/fstab"
  : > "$R/etc/machine-id"
  chroot "$R" passwd -d root >/dev/null
  cat > "$R/etc/systemd/system/hstest.service" <<'UNIT'
[Unit]
Description=hotsplice package test scenario (/hstest/run.sh)
After=multi-user.target
ConditionPathExists=/hstest/run.sh

[Service]
Type=oneshot
ExecStart=/bin/sh /hstest/run.sh
StandardOutput=tty
StandardError=tty
# The kernel's console: ttyS0 on bare QEMU, hvc0 in a Xen dom0.
TTYPath=/dev/console

[Install]
WantedBy=multi-user.target
UNIT
  ln -sf /etc/systemd/system/hstest.service "$R/etc/systemd/system/multi-user.target.wants/hstest.service"
  # No login prompt on the console the test reads; no network needed.
  ln -sf /dev/null "$R/etc/systemd/system/serial-getty@ttyS0.service"
  ln -sf /dev/null "$R/etc/systemd/system/getty@tty1.service"
  ln -sf /dev/null "$R/etc/systemd/system/serial-getty@hvc0.service"
  # An offline system: no package lists, no downloaded packages, so that
  # `apt install ./x.deb` resolves from what is installed and downloads
  # nothing (Recommends that are not installed are left out).
  find "$R/var/lib/apt/lists" -maxdepth 1 -type f -delete
  rm -f "$R"/var/cache/apt/*.bin
  rm -f "$R"/var/cache/apt/archives/*.deb
  rm -f "$D/base.img"
  mkfs.ext4 -q -F -L hsroot -d "$R" "$D/base.img.tmp" 1536M >&2
  mv "$D/base.img.tmp" "$D/base.img"
  "$REPO/scripts/kernel/mkinitrd.sh" -i "$REPO/scripts/debian/init-switchroot" -m "virtio_pci virtio_blk ext4" "$D/initrd.zst" >&2
  echo "$stamp" > "$D/base.stamp"
fi
echo "$D/base.img"
echo "$D/initrd.zst"
