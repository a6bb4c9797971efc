#!/bin/sh
# Scenario: load the sample livepatch, check /proc/version changes, disable
# and unload it, check /proc/version is restored.
# Expects /lib/hotsplice/hs_sample_livepatch.ko in the initramfs.
KO=/lib/hotsplice/hs_sample_livepatch.ko
NAME=hs_sample_livepatch
LP=/sys/kernel/livepatch/$NAME
hs() { echo "HSTEST $*"; }

# Wait until $LP/transition reads 0; prints the final value, or "gone" when the
# patch directory disappeared (a disabled patch is freed right after its
# transition completes, which removes its sysfs directory).
wait_transition() {
    i=0
    while [ $i -lt 300 ]; do
        v=$(cat $LP/transition 2>/dev/null) || { echo gone; return; }
        [ "$v" = 0 ] && { echo 0; return; }
        sleep 0.1; i=$((i + 1))
    done
    echo "timeout($v)"
}

hs "uname-r=$(uname -r)"
if grep -qx version_proc_show /sys/kernel/tracing/available_filter_functions 2>/dev/null; then
    hs "ftrace-traceable version_proc_show=yes"
else
    hs "ftrace-traceable version_proc_show=no"
fi
# static functions appear in /proc/kallsyms as type 't' (root sees real addresses)
hs "kallsyms version_proc_show=$(grep ' version_proc_show$' /proc/kallsyms)"
hs "kallsyms-local-text-symbols=$(grep -c ' t ' /proc/kallsyms)"
hs "tainted-before=$(cat /proc/sys/kernel/tainted)"
hs "value-before=$(cat /proc/version)"

if insmod $KO; then hs "insmod=ok"; else hs "insmod=failed"; exit 1; fi
hs "transition-after-enable=$(wait_transition)"
hs "enabled=$(cat $LP/enabled)"
hs "value-patched=$(cat /proc/version)"
hs "tainted-patched=$(cat /proc/sys/kernel/tainted)"

echo 0 > $LP/enabled
hs "transition-after-disable=$(wait_transition)"
# the sysfs directory goes away once the patch is disabled and freed
i=0
while [ -d $LP ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
if rmmod $NAME; then hs "rmmod=ok"; else hs "rmmod=failed"; fi
hs "value-after=$(cat /proc/version)"
hs "lsmod-after=$(grep -c "^$NAME " /proc/modules)"
