#!/bin/sh
# Scenario: apply one kernel patch with the hotsplice client, see it in
# /proc/version, in `hotsplice kernel uname -r` / `uptrack-uname -r` (the
# effective release) while uname -r stays the booted one, in `show` /
# `uptrack-show`; undo it and see everything restored.
# shellcheck disable=SC1091
. /tests/hslib.sh
hs "basic-uname-r-before=$(uname -r)"
hs "basic-version-before=$(cat /proc/version)"
hs "basic-kuname-before=$(hotsplice kernel uname -r)"
hsrun basic-available hotsplice kernel show --available --from /feed
hsrun basic-apply hotsplice kernel apply "$LP1"
hs "basic-version-patched=$(cat /proc/version)"
hs "basic-uname-r-patched=$(uname -r)"
hs "basic-kuname-patched=$(hotsplice kernel uname -r)"
hs "basic-uptrack-uname-patched=$(uptrack-uname -r 2>&1 | head -n1)"
hs "basic-kuname-a-patched=$(hotsplice kernel uname -a)"
hsrun basic-show hotsplice kernel show
hsrun basic-uptrack-show uptrack-show
hs "basic-count-patched=$(hotsplice kernel show --count)"
hs "basic-lsmod-patched=$(hs_lsmod)"
hs "basic-klp-patched=$(hs_klp)"
hsrun basic-undo hotsplice kernel undo "$LP1_ID"
hs "basic-version-after=$(cat /proc/version)"
hs "basic-kuname-after=$(hotsplice kernel uname -r)"
hs "basic-uptrack-uname-after=$(uptrack-uname -r 2>&1 | head -n1)"
hs "basic-count-after=$(hotsplice kernel show --count)"
hs "basic-lsmod-after=$(hs_lsmod)"
hs "basic-klp-after=$(hs_klp)"
