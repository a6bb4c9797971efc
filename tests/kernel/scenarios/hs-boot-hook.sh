#!/bin/sh
# Scenario (reboot test, boots 2 and 3): run first after the state disk is
# mounted, like a distribution's early boot hook: `hotsplice kernel boot`
# re-applies the recorded patches (or, with `nouptrack` on the kernel
# command line, says it does not).
. /tests/hslib.sh
grep -q ' /mnt ' /proc/mounts || { hs "hook=no-disk"; exit 1; }
hs "hook-cmdline-nouptrack=$(grep -c nouptrack /proc/cmdline)"
hs "hook-uptrack-uname-before=$(uptrack-uname -r)"
hs "hook-version-before=$(cat /proc/version)"
hsrun hook hotsplice kernel boot
hs "hook-uname-r=$(uname -r)"
hs "hook-uptrack-uname-after=$(uptrack-uname -r)"
hs "hook-version-after=$(cat /proc/version)"
hs "hook-lsmod=$(hs_lsmod)"
hs "hook-count=$(uptrack-show --count)"
hsrun hook-show uptrack-show
