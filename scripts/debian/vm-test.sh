#!/usr/bin/env bash
# The package in a real Debian 12 system under QEMU (TCG, systemd as PID 1,
# the stock kernel of the kernel tests): copies the cached image
# (mkroot.sh), puts the package, a signed kernel patch (a feed directory)
# and the public key that signed it into /hstest, and boots it twice
# (guest-run.sh says what each boot does). Prints the serial console's
# HSTEST lines of both boots.
#
# Usage: scripts/debian/vm-test.sh [--xen] DEB PATCH.hsp KEY.pub OUTDIR [PROG PROG.hsp]
#   PROG, PROG.hsp: a small program the guest runs as a systemd service
#   (it prints result=N) and a userspace patch for it, signed by the key.
#   --xen: boot the system as a Xen dom0 (Debian's Xen 4.17, scripts/debian/xen.sh)
#   both times; the guest runs the dom0 scenario.
# The serial logs are OUTDIR/serial-1.log and serial-2.log.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/../.." && pwd)"
export HOTSPLICE_CACHE="${HOTSPLICE_CACHE:-$REPO/.cache}"
xen=()
if [ "${1:-}" = --xen ]; then
  xen=(-x "$("$REPO/scripts/debian/xen.sh")")
  shift
fi
[ $# -eq 4 ] || [ $# -eq 6 ] || { echo "usage: $0 [--xen] DEB PATCH.hsp KEY.pub OUTDIR [PROG PROG.hsp]" >&2; exit 2; }
DEB=$1 PATCH=$2 PUB=$3 OUT=$4 PROG=${5:-} PROGPATCH=${6:-}
mapfile -t made < <("$REPO/scripts/debian/mkroot.sh")
if [ ${#made[@]} -lt 2 ]; then
  echo "vm-test.sh: scripts/debian/mkroot.sh made no image (its errors are above); rerun it alone to see why" >&2
  exit 1
fi
IMG=${made[0]} INITRD=${made[1]}
mkdir -p "$OUT"
disk="$OUT/disk.img"
cp --sparse=always "$IMG" "$disk"
put() { debugfs -w -R "write $1 $2" "$disk" >/dev/null 2>&1; }
debugfs -w -R "mkdir /hstest" "$disk" >/dev/null 2>&1
debugfs -w -R "mkdir /hstest/feed" "$disk" >/dev/null 2>&1
put "$REPO/scripts/debian/guest-run.sh" /hstest/run.sh
put "$DEB" /hstest/hotsplice.deb
basename "$DEB" > "$OUT/debname"
put "$OUT/debname" /hstest/debname
if [ ${#xen[@]} -gt 0 ]; then put "$OUT/debname" /hstest/xen; fi
put "$PATCH" "/hstest/feed/$(basename "$PATCH")"
put "$PUB" /hstest/test.pub
if [ -n "$PROG" ]; then
  put "$PROG" /hstest/hsdemo
  put "$PROGPATCH" /hstest/hsdemo.hsp
fi
for boot in 1 2; do
  "$REPO/scripts/kernel/boot.sh" "${xen[@]}" -d "$disk" -t "${HOTSPLICE_DEBIAN_BOOT_TIMEOUT:-600}" \
    -a "root=/dev/vda hsboot=$boot" -l "$OUT/serial-$boot.log" "$INITRD" | sed "s/^HSTEST /HSTEST boot$boot /"
done
