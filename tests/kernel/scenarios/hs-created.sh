#!/bin/sh
# Scenario: fixes made by `hotsplice create --kernel` applied at once
# (CREATED_FILES, modules CREATED_MODS; BM_MOD patches binfmt_misc, which
# is loaded only afterwards), their objects' `patched` flags, the carried
# dynamic-debug descriptors of binfmt_misc's patched code, then all removed.
# shellcheck disable=SC1091
. /tests/hslib.sh
# shellcheck disable=SC2086
hsrun created-apply hotsplice kernel apply $CREATED_FILES
for m in $CREATED_MODS; do
    for o in /sys/kernel/livepatch/"$m"/*/; do
        [ -f "$o/patched" ] && hs "created-patched $m $(basename "$o")=$(cat "$o/patched")"
    done
    hs "created-transition $m=$(cat /sys/kernel/livepatch/"$m"/transition)"
done
hsrun created-insmod insmod /lib/hotsplice/binfmt_misc.ko
hs "created-patched-after-insmod=$(cat /sys/kernel/livepatch/"$BM_MOD"/binfmt_misc/patched)"
mkdir -p /tmp/bm && mount -t binfmt_misc none /tmp/bm
echo 'file fs/binfmt_misc.c +p' > /proc/dynamic_debug/control
hs "created-dyndbg-own=$(grep -c "\[$BM_MOD\]" /proc/dynamic_debug/control)"
echo ':hstest:E::hsx::/bin/true:' > /tmp/bm/register
hs "created-registered=$(head -1 /tmp/bm/hstest)"
hs "created-pr-debug=$(dmesg | grep -c 'register: received')"
echo -1 > /tmp/bm/hstest
umount /tmp/bm
hsrun created-undo hotsplice kernel remove --all
hs "created-lsmod-after=$(hs_lsmod)"
hs "created-klp-after=$(hs_klp)"
