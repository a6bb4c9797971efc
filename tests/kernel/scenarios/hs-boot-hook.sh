#!/bin/sh
# Scenario (reboot test, boots 2 and 3): run first after the state disk is
# mounted, like a distribution's early boot hook: `hotsplice kernel boot`
# re-applies the recorded patches (or, with `nouptrack` on the kernel
# command line, says it does not).
# shellcheck disable=SC1091
. /tests/hslib.sh
grep -q ' /mnt ' /proc/mounts || { hs "hook=no-disk"; exit 1; }
hs "hook-cmdline-nouptrack=$(grep -c nouptrack /proc/cmdline)"
hs "hook-kuname-before=$(hotsplice kernel uname -r)"
hs "hook-uptrack-uname-before=$(uptrack-uname -r 2>&1 | head -n1)"
hs "hook-version-before=$(cat /proc/version)"
hsrun hook hotsplice kernel boot
hs "hook-uname-r=$(uname -r)"
hs "hook-kuname-after=$(hotsplice kernel uname -r)"
hs "hook-uptrack-uname-after=$(uptrack-uname -r 2>&1 | head -n1)"
hs "hook-version-after=$(cat /proc/version)"
hs "hook-lsmod=$(hs_lsmod)"
hs "hook-count=$(hotsplice kernel show --count)"
hsrun hook-show hotsplice kernel show
hsrun hook-uptrack-show uptrack-show
