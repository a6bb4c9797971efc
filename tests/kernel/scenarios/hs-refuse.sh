#!/bin/sh
# Scenario: patches that must be refused with nothing loaded: one made for
# another kernel build, and a damaged patch file.
# shellcheck disable=SC1091
. /tests/hslib.sh
hsrun refuse-wrong hotsplice kernel apply "$WRONG"
hs "refuse-wrong-lsmod=$(hs_lsmod)"
hs "refuse-wrong-klp=$(hs_klp)"
hs "refuse-wrong-count=$(hotsplice kernel show --count)"
hsrun refuse-corrupt hotsplice kernel apply "$CORRUPT"
hs "refuse-corrupt-lsmod=$(hs_lsmod)"
hs "refuse-corrupt-klp=$(hs_klp)"
hs "refuse-corrupt-count=$(hotsplice kernel show --count)"
hs "refuse-version=$(cat /proc/version)"
