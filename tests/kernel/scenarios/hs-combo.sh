#!/bin/sh
# Scenario: one patch changing a vmlinux function (version_proc_show) and a
# function of the ext4 module (ext4_show_options, seen in /proc/mounts for
# the ext4 state disk at /mnt).
# shellcheck disable=SC1091
. /tests/hslib.sh
if grep -qx 'ext4_show_options \[ext4\]' /sys/kernel/tracing/available_filter_functions; then
    hs "combo-traceable ext4_show_options=yes"
else
    hs "combo-traceable ext4_show_options=no"
fi
hs "combo-mounts-before=$(grep ' /mnt ' /proc/mounts)"
hs "combo-version-before=$(cat /proc/version)"
hsrun combo-apply hotsplice kernel apply "$COMBO"
hs "combo-mounts-patched=$(grep ' /mnt ' /proc/mounts)"
hs "combo-version-patched=$(cat /proc/version)"
hs "combo-kuname-patched=$(hotsplice kernel uname -r)"
objs=
for o in /sys/kernel/livepatch/"$COMBO_MOD"/*/; do
    [ -d "$o" ] && objs="$objs $(basename "$o")"
done
hs "combo-klp-objects=${objs# }"
hsrun combo-undo hotsplice kernel undo "$COMBO_ID"
hs "combo-mounts-after=$(grep ' /mnt ' /proc/mounts)"
hs "combo-version-after=$(cat /proc/version)"
hs "combo-lsmod-after=$(hs_lsmod)"
