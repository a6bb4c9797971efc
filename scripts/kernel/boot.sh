#!/usr/bin/env bash
# Boot the cached Debian kernel under QEMU (TCG) with an initramfs; the serial
# console goes to a log file; the guest powers off when its init is done.
#
# Usage: scripts/kernel/boot.sh [-d DISK] [-t TIMEOUT_S] [-a APPEND] [-l LOG] [-m MEM] [-s SMP] [-x XEN] INITRD
#   -d DISK     raw disk image (e.g. from mkdisk.sh) attached as virtio-blk (/dev/vda)
#   -t SECONDS  kill QEMU after this long (default 240); exit status 124 then
#   -a APPEND   extra kernel command-line words (e.g. "hstest=livepatch-sample")
#   -l LOG      serial log file (default: $CACHE/kernel/serial.log)
#   -m MEM      guest memory (default 1G);  -s SMP  vCPUs (default 1)
#   -x XEN      boot the Xen hypervisor XEN (decompressed ELF) with the kernel as dom0
# Prints the log's "HSTEST " lines on stdout and the boot time on stderr.
# Env: HOTSPLICE_BOOT_VERBOSE=1 prints the whole serial log at the end;
#      HOTSPLICE_GUEST_CPUS: the default of -s.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/../.." && pwd)"
# HOTSPLICE_KERNEL_VERSION=6.1.176-1: use that pinned build (fetch.sh PKGVER)
KV="${HOTSPLICE_KERNEL_VERSION:-}"
CACHE="${HOTSPLICE_CACHE:-$REPO/.cache}/kernel${KV:+-${KV%%-*}}"
DISK='' TIMEOUT=240 APPEND='' LOG='' MEM=1G SMP=${HOTSPLICE_GUEST_CPUS:-1}
XEN=''
usage() { sed -n '5,12p' "$0" >&2; exit 2; }
while getopts "d:t:a:l:m:s:x:" opt; do
    case $opt in
        d) DISK=$OPTARG ;; t) TIMEOUT=$OPTARG ;; a) APPEND=$OPTARG ;;
        l) LOG=$OPTARG ;; m) MEM=$OPTARG ;; s) SMP=$OPTARG ;; x) XEN=$OPTARG ;; *) usage ;;
    esac
done
shift $((OPTIND - 1))
[ $# -eq 1 ] || usage
INITRD=$1
[ -f "$CACHE/.complete" ] || "$REPO/scripts/kernel/fetch.sh" >&2
# shellcheck disable=SC1091
. "$CACHE/env.sh"
LOG=${LOG:-$CACHE/serial.log}
mkdir -p "$(dirname "$LOG")"
: > "$LOG"

# no_timer_check: under TCG on a loaded host the kernel's IO-APIC timer check
# can miss its ticks and panic ("IO-APIC + timer doesn't work!").
[ -n "$DISK" ] || APPEND="$APPEND hsdisk=none"
args=(-accel tcg -m "$MEM" -smp "$SMP" -nographic -no-reboot
      -monitor none -serial "file:$LOG")
if [ -z "$XEN" ]; then
    args+=(-kernel "$VMLINUZ" -initrd "$INITRD"
           -append "console=ttyS0 panic=-1 oops=panic no_timer_check $APPEND")
else
    # Xen through QEMU's multiboot loader: the hypervisor is the "kernel",
    # the modules ("-initrd", comma-separated, each "FILE ARGS") are dom0's
    # kernel with its command line and its initramfs. Xen's console is
    # com1 (the serial log), dom0's is hvc0, which Xen writes there too.
    # -cpu qemu64: with -cpu max dom0 crashes early (create_bounce_frame).
    # dom0 gets all but 256 MB of the guest's memory.
    case "$VMLINUZ$INITRD$APPEND" in *,*) echo "boot.sh: no commas in paths or APPEND with -x" >&2; exit 2 ;; esac
    mem_mb=$(( $(numfmt --from=iec "$MEM") / 1048576 ))
    dom0=$(( mem_mb - 256 ))
    args+=(-cpu qemu64 -kernel "$XEN"
           -append "console=com1 com1=115200,8n1 dom0_mem=${dom0}M,max:${dom0}M noreboot"
           -initrd "$VMLINUZ console=hvc0 panic=-1 oops=panic no_timer_check $APPEND,$INITRD")
fi
if [ -n "$DISK" ]; then
    args+=(-drive "file=$DISK,format=raw,if=virtio,cache=writeback")
fi

t0=$(date +%s.%N)
rc=0
timeout -s KILL "$TIMEOUT" qemu-system-x86_64 "${args[@]}" </dev/null >"$LOG.qemu" 2>&1 || rc=$?
t1=$(date +%s.%N)
[ $rc = 137 ] && rc=124
printf 'boot.sh: boot-to-poweroff %.1fs (qemu exit %d)\n' "$(echo "$t1 - $t0" | bc)" "$rc" >&2
if [ "${HOTSPLICE_BOOT_VERBOSE:-0}" = 1 ]; then cat "$LOG" >&2; fi
tr -d '\r' < "$LOG" | grep '^HSTEST ' || true
if [ $rc != 0 ]; then
    echo "boot.sh: qemu failed or timed out (rc=$rc); qemu output:" >&2
    cat "$LOG.qemu" >&2
    exit $rc
fi
grep -q '^HSTEST init-done' <(tr -d '\r' < "$LOG") || { echo "boot.sh: guest did not finish (see $LOG)" >&2; exit 1; }
