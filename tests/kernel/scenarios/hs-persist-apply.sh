#!/bin/sh
# Scenario (reboot test, boot 1): apply two patches with the state on the
# disk (HOTSPLICE_STATE_DIR under /mnt); they stay applied at power-off.
# shellcheck disable=SC1091
. /tests/hslib.sh
case $HOTSPLICE_STATE_DIR in /mnt/*) ;; *) hs "persist-apply=state-not-on-disk"; exit 1 ;; esac
grep -q ' /mnt ' /proc/mounts || { hs "persist-apply=no-disk"; exit 1; }
hsrun persist-apply hotsplice kernel apply "$LP1" "$LP2"
hs "persist-version=$(cat /proc/version)"
hs "persist-kuname=$(hotsplice kernel uname -r)"
hs "persist-uptrack-uname=$(uptrack-uname -r 2>&1 | head -n1)"
hs "persist-recorded=$(grep -c '"id"' "$HOTSPLICE_STATE_DIR/kernel/applied.json")"
sync
