#!/bin/sh
# Scenario: two patches of the same function stacked; the lower one cannot be
# removed while the upper one is applied; removal in reverse order; then
# `hotsplice kernel remove --all` and `uptrack-remove --all`.
# shellcheck disable=SC1091
. /tests/hslib.sh
hsrun stack-apply1 hotsplice kernel apply "$LP1"
hsrun stack-apply2 hotsplice kernel apply "$LP2"
hs "stack-version-both=$(cat /proc/version)"
hs "stack-kuname-both=$(hotsplice kernel uname -r)"
hs "stack-count-both=$(hotsplice kernel show --count)"
hsrun stack-show-both uptrack-show
hsrun stack-undo-lower hotsplice kernel undo "$LP1_ID"
hs "stack-version-after-refusal=$(cat /proc/version)"
hs "stack-lsmod-after-refusal=$(hs_lsmod)"
hsrun stack-undo-upper hotsplice kernel undo "$LP2_ID"
hs "stack-version-lower-only=$(cat /proc/version)"
hs "stack-kuname-lower-only=$(hotsplice kernel uname -r)"
hsrun stack-undo-lower-now hotsplice kernel undo "$LP1_ID"
hs "stack-version-none=$(cat /proc/version)"
hs "stack-lsmod-none=$(hs_lsmod)"

hsrun stack-apply-two hotsplice kernel apply "$LP1" "$LP2"
hs "stack-version-two=$(cat /proc/version)"
hsrun stack-remove-all hotsplice kernel remove --all
hs "stack-version-remove-all=$(cat /proc/version)"
hs "stack-lsmod-remove-all=$(hs_lsmod)"
hs "stack-klp-remove-all=$(hs_klp)"

hsrun stack-install-two uptrack-install "$LP1" "$LP2"
hs "stack-version-install-two=$(cat /proc/version)"
hsrun stack-uptrack-remove-all uptrack-remove --all
hs "stack-version-uptrack-remove-all=$(cat /proc/version)"
hs "stack-lsmod-uptrack-remove-all=$(hs_lsmod)"
hs "stack-count-end=$(hotsplice kernel show --count)"
hs "stack-uptrack-count-end=$(uptrack-show --count 2>&1 | head -n1)"
