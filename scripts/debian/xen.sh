#!/usr/bin/env bash
# Debian 12's Xen hypervisor for the dom0 test (Oracle VM's case): downloads
# xen-hypervisor-4.17-amd64 once with apt-get download, extracts it with
# dpkg-deb -x (never into /) and decompresses boot/xen-4.17-amd64.gz, which
# QEMU's multiboot loader takes as -kernel (scripts/kernel/boot.sh -x).
# Cached in $HOTSPLICE_CACHE/debian12/xen/; prints the hypervisor's path.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/../.." && pwd)"
export HOTSPLICE_CACHE="${HOTSPLICE_CACHE:-$REPO/.cache}"
X="$HOTSPLICE_CACHE/debian12/xen"
PKG=xen-hypervisor-4.17-amd64
mkdir -p "$X"
exec 9>"$X/.lock"
flock 9
if [ ! -f "$X/.complete" ]; then
  rm -rf "$X/debs" "$X/root"
  mkdir -p "$X/debs"
  (cd "$X/debs" && { apt-get download "$PKG" >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get download "$PKG" >&2; }; })
  deb=$(ls "$X"/debs/"$PKG"_*.deb)
  dpkg-deb -x "$deb" "$X/root"
  gz=$(ls "$X"/root/boot/xen-4.17-amd64.gz)
  gunzip -c "$gz" > "$X/xen.tmp"
  mv "$X/xen.tmp" "$X/xen"
  dpkg-deb -f "$deb" Version > "$X/VERSION"
  touch "$X/.complete"
fi
echo "$X/xen"
