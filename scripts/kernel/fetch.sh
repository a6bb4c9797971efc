#!/usr/bin/env bash
# Fetch the Debian 12 stock kernel (image, headers, kbuild, source) and a
# static busybox into the cache, extracted with dpkg-deb -x (never into /),
# and make sure the host tools to build modules and boot QEMU are installed.
#
# Usage: scripts/kernel/fetch.sh [PKGVER]
#   PKGVER  a Debian package version of the 6.1 kernel (e.g. 6.1.176-1): fetch
#           that build instead of the current linux-image-amd64, into
#           $HOTSPLICE_CACHE/kernel-<upstream version> (e.g. kernel-6.1.176),
#           so the default cache is never touched.
# Env:   HOTSPLICE_CACHE  cache root (default: <repo>/.cache); files go to
#                         $HOTSPLICE_CACHE/kernel (or kernel-X.Y.Z, above)
#        HOTSPLICE_KERNEL_NO_SOURCE=1  skip unpacking the linux-source tarball
#        HOTSPLICE_KERNEL_SOURCE_ONLY=1  with PKGVER: fetch and unpack only
#                         linux-source (into $CACHE/src), no image/headers
#
# Layout of $CACHE/kernel after a run:
#   KVER                   kernel release, e.g. 6.1.0-56-amd64
#   PKGVER                 Debian package version, e.g. 6.1.192-2
#   debs/*.deb             downloaded packages
#   root/                  all packages extracted into one tree:
#     boot/vmlinuz-$KVER, boot/config-$KVER, boot/System.map-$KVER (placeholder)
#     lib/modules/$KVER/   modules of the image package
#     usr/src/linux-headers-$KVER{,-common-ish}, usr/lib/linux-kbuild-6.1
#     bin/busybox          static busybox
#   src/linux-source-6.1/  unpacked Debian kernel source (matching version)
#   env.sh                 shell variables (KVER, VMLINUZ, KDIR, MODDIR, ...)
#
# Idempotent: a second run with everything cached takes seconds.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/../.." && pwd)"
WANT="${1:-${HOTSPLICE_KERNEL_VERSION:-}}"
if [ -n "$WANT" ]; then
    case "$WANT" in
        6.1.*-*) ;;
        *) echo "fetch.sh: PKGVER must be a Debian 6.1 kernel version like 6.1.176-1, not '$WANT'" >&2; exit 2 ;;
    esac
    CACHE="${HOTSPLICE_CACHE:-$REPO/.cache}/kernel-${WANT%%-*}"
else
    CACHE="${HOTSPLICE_CACHE:-$REPO/.cache}/kernel"
fi
SOURCE_ONLY="${HOTSPLICE_KERNEL_SOURCE_ONLY:-0}"
if [ "$SOURCE_ONLY" = 1 ] && [ -z "$WANT" ]; then
    echo "fetch.sh: HOTSPLICE_KERNEL_SOURCE_ONLY=1 needs a PKGVER argument" >&2; exit 2
fi
mkdir -p "$CACHE/debs" "$CACHE/root"
CACHE="$(cd "$CACHE" && pwd)"
# serialize concurrent runs (e.g. parallel tests) on the same cache
exec 9>"$CACHE/.lock"
flock 9
t0=$(date +%s.%N)

log() { echo "fetch.sh: $*" >&2; }

# --- host tools -----------------------------------------------------------
need_pkgs=()
for pair in qemu-system-x86:qemu-system-x86_64 cpio:cpio xz-utils:xz zstd:zstd \
            bc:bc flex:flex bison:bison e2fsprogs:mkfs.ext4 make:make gcc:gcc \
            kmod:modinfo dwarves:pahole jq:jq; do
    pkg=${pair%%:*}; cmd=${pair#*:}
    command -v "$cmd" >/dev/null 2>&1 || need_pkgs+=("$pkg")
done
for pkg in libelf-dev libssl-dev; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' \
        || need_pkgs+=("$pkg")
done
if [ ${#need_pkgs[@]} -gt 0 ]; then
    log "installing host packages: ${need_pkgs[*]}"
    if [ "$(id -u)" != 0 ]; then log "need root to apt-get install"; exit 1; fi
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need_pkgs[@]}" >/dev/null; then
        apt-get update >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need_pkgs[@]}" >/dev/null
    fi
fi
t_tools=$(date +%s.%N)

# --- resolve the stock kernel ---------------------------------------------
CACHED=0
if [ -s "$CACHE/KVER" ] && [ -s "$CACHE/PKGVER" ] && [ -f "$CACHE/.complete" ]; then
    CACHED=1
    KVER=$(cat "$CACHE/KVER"); PKGVER=$(cat "$CACHE/PKGVER")
    ABI=${KVER%-amd64}; MAJ=$(echo "$KVER" | cut -d. -f1,2)
    log "cached: kernel $KVER ($PKGVER) in $CACHE"
fi

resolve() {
    if [ -n "$WANT" ]; then
        # the image package (linux-image-6.1.0-N-amd64) whose version is $WANT
        IMGPKG=""
        for p in $(apt-cache search --names-only '^linux-image-[0-9.]+-[0-9]+-amd64$' 2>/dev/null | awk '{print $1}'); do
            if apt-cache show "$p" 2>/dev/null | grep -qx "Version: $WANT"; then IMGPKG=$p; break; fi
        done
        return 0
    fi
    IMGPKG=$(apt-cache depends linux-image-amd64 2>/dev/null \
        | sed -n 's/^ *Depends: \(linux-image-[0-9].*-amd64\)$/\1/p' | head -n1)
}
if [ "$SOURCE_ONLY" = 1 ]; then
    # only the kernel source of $WANT (e.g. the fixed tree a corpus is diffed from)
    MAJ=$(echo "$WANT" | cut -d. -f1,2)
    if [ ! -f "$CACHE/src/.complete-$WANT" ]; then
        cd "$CACHE/debs"
        ls "linux-source-${MAJ}_${WANT}_"*.deb >/dev/null 2>&1 || {
            log "downloading linux-source-$MAJ=$WANT"
            apt-get download "linux-source-$MAJ=$WANT" >/dev/null 2>&1 \
                || { apt-get update >/dev/null; apt-get download "linux-source-$MAJ=$WANT"; }
        }
        dpkg-deb -x "linux-source-${MAJ}_${WANT}_"*.deb "$CACHE/root"
        # shellcheck disable=SC2012
        tarball=$(ls "$CACHE"/root/usr/src/linux-source-"$MAJ".tar.* | head -n1)
        log "unpacking $(basename "$tarball")"
        rm -rf "$CACHE/src"; mkdir -p "$CACHE/src"
        tar -C "$CACHE/src" -xf "$tarball"
        rm -rf "$CACHE/root"
        touch "$CACHE/src/.complete-$WANT"
    fi
    echo "KSRC=$CACHE/src/linux-source-$MAJ" > "$CACHE/env.sh"
    log "linux-source $WANT ready in $CACHE/src"
    exit 0
fi
if [ $CACHED = 0 ]; then
resolve
if [ -z "${IMGPKG:-}" ]; then apt-get update >/dev/null; resolve; fi
[ -n "${IMGPKG:-}" ] || { log "cannot resolve linux-image-amd64${WANT:+ of version $WANT}"; exit 1; }
KVER=${IMGPKG#linux-image-}                       # 6.1.0-56-amd64
ABI=${KVER%-amd64}                                # 6.1.0-56
if [ -n "$WANT" ]; then PKGVER=$WANT; else
PKGVER=$(apt-cache show "$IMGPKG" | sed -n 's/^Version: //p' | head -n1); fi   # 6.1.192-2
MAJ=$(echo "$KVER" | cut -d. -f1,2)               # 6.1
log "stock kernel: $IMGPKG version $PKGVER"

PKGS=("$IMGPKG=$PKGVER" "linux-headers-$KVER=$PKGVER" "linux-headers-$ABI-common=$PKGVER"
      "linux-kbuild-$MAJ=$PKGVER" "linux-source-$MAJ=$PKGVER" "busybox-static")

# --- download -------------------------------------------------------------
t1=$(date +%s.%N)
cd "$CACHE/debs"
for spec in "${PKGS[@]}"; do
    name=${spec%%=*}
    if [ "$name" = "$spec" ]; then pat="${name}_*_*.deb"; else
        v=${spec#*=}; pat="${name}_${v//:/%3a}_*.deb"; fi
    # shellcheck disable=SC2086
    if ls $pat >/dev/null 2>&1; then continue; fi
    log "downloading $spec"
    apt-get download "$spec" >/dev/null 2>&1 || { apt-get update >/dev/null; apt-get download "$spec"; }
done
t2=$(date +%s.%N)

# --- extract --------------------------------------------------------------
for deb in "$CACHE"/debs/*.deb; do
    stamp="$CACHE/root/.x-$(basename "$deb")"
    [ -f "$stamp" ] && continue
    log "extracting $(basename "$deb")"
    dpkg-deb -x "$deb" "$CACHE/root"
    touch "$stamp"
done
# the busybox-static package ships bin/busybox
[ -x "$CACHE/root/bin/busybox" ] || { log "no busybox in busybox-static?"; exit 1; }

# Unpack the kernel source tarball (linux-source-6.1 ships a .tar.xz).
if [ "${HOTSPLICE_KERNEL_NO_SOURCE:-0}" != 1 ] && [ ! -f "$CACHE/src/.complete-$PKGVER" ]; then
    # shellcheck disable=SC2012
    tarball=$(ls "$CACHE"/root/usr/src/linux-source-"$MAJ".tar.* | head -n1)
    log "unpacking $(basename "$tarball")"
    rm -rf "$CACHE/src"; mkdir -p "$CACHE/src"
    tar -C "$CACHE/src" -xf "$tarball"
    touch "$CACHE/src/.complete-$PKGVER"
fi
t3=$(date +%s.%N)
fi  # CACHED = 0

# --- fix up the headers tree so it works from inside the cache -------------
# linux-headers-$KVER (arch part) refers to the -common part and to kbuild via
# absolute /usr/src and relative ../../lib/linux-kbuild-* paths; see
# build-module.sh for how they are resolved.  Rewrite absolute symlinks /
# includes to the cache root.
KDIR="$CACHE/root/usr/src/linux-headers-$KVER"
COMMON="$CACHE/root/usr/src/linux-headers-$ABI-common"
if [ ! -d "$KDIR" ] || [ ! -d "$COMMON" ]; then log "headers missing"; exit 1; fi
find "$KDIR" "$COMMON" "$CACHE/root/lib/modules/$KVER" -maxdepth 2 -type l | while read -r l; do
    tgt=$(readlink "$l")
    case "$tgt" in
        /usr/*) ln -sfn "$CACHE/root$tgt" "$l" ;;
    esac
done
# The arch headers Makefile is one line, `include /usr/src/linux-headers-$ABI-common/Makefile`;
# point it at the cache (only rewrites the pristine /usr/src form, so reruns are no-ops).
sed -i "s#^include /usr/src/#include $CACHE/root/usr/src/#" "$KDIR/Makefile"
ln -sfn "$KDIR" "$CACHE/root/lib/modules/$KVER/build"
# The image package ships no modules.dep (depmod runs at install time):
# generate it inside the cache so `modprobe -d ROOT --show-depends` works.
[ -s "$CACHE/root/lib/modules/$KVER/modules.dep" ] || depmod -b "$CACHE/root" "$KVER"

echo "$KVER" > "$CACHE/KVER"
echo "$PKGVER" > "$CACHE/PKGVER"
cat > "$CACHE/env.sh" <<ENV
KVER=$KVER
PKGVER=$PKGVER
VMLINUZ=$CACHE/root/boot/vmlinuz-$KVER
MODDIR=$CACHE/root/lib/modules/$KVER
KDIR=$KDIR
BUSYBOX=$CACHE/root/bin/busybox
KSRC=$CACHE/src/linux-source-$MAJ
ENV
touch "$CACHE/.complete"
if [ $CACHED = 1 ]; then
    printf 'fetch.sh: tools %.1fs, download+extract 0.0s (cached), total %.1fs\n' \
        "$(echo "$t_tools - $t0" | bc)" "$(echo "$(date +%s.%N) - $t0" | bc)"
    exit 0
fi
printf 'fetch.sh: tools %.1fs, download %.1fs, extract %.1fs, total %.1fs\n' \
    "$(echo "$t_tools - $t0" | bc)" "$(echo "$t2 - $t1" | bc)" "$(echo "$t3 - $t2" | bc)" \
    "$(echo "$(date +%s.%N) - $t0" | bc)"
log "kernel $KVER ($PKGVER) ready in $CACHE"
