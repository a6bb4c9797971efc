#!/bin/sh
# Scenario: a patch of pipe_read while a task sleeps in pipe_read (reading an
# empty FIFO whose writer never writes): with HOTSPLICE_TRANSITION_TIMEOUT=3
# the transition cannot finish (livepatch's fake signals come only after
# ~15 s), so hotsplice reverts it, names the task with its stack, and the
# module is gone.
# shellcheck disable=SC1091
. /tests/hslib.sh
rm -f /tmp/hs-fifo
mkfifo /tmp/hs-fifo
cat /tmp/hs-fifo > /dev/null &
reader=$!
sleep 600 > /tmp/hs-fifo &
writer=$!
sleep 1
hs "stuck-reader-pid=$reader"
hs "stuck-reader-comm=$(cat /proc/$reader/comm)"
hs "stuck-reader-stack-has-pipe_read=$(grep -c pipe_read /proc/$reader/stack)"
hs "stuck-version-before=$(cat /proc/version)"
t0=$(cut -d' ' -f1 /proc/uptime)
hsrun stuck-apply env HOTSPLICE_TRANSITION_TIMEOUT=3 hotsplice kernel apply "$PIPE"
t1=$(cut -d' ' -f1 /proc/uptime)
hs "stuck-apply-seconds=$(echo "$t0 $t1" | awk '{ printf "%.2f", $2 - $1 }')"
hs "stuck-lsmod-after=$(hs_lsmod)"
hs "stuck-klp-after=$(hs_klp)"
hs "stuck-count-after=$(hotsplice kernel show --count)"
hs "stuck-version-after=$(cat /proc/version)"
hs "stuck-reader-alive=$([ -d /proc/$reader ] && echo yes || echo no)"
# if the module lingered, how long until it goes (diagnostic only)
i=0
while grep -q '^hs_lp_pipe_read ' /proc/modules && [ $i -lt 30 ]; do sleep 0.1; i=$((i + 1)); done
hs "stuck-lsmod-1s-later=$(hs_lsmod)"
kill "$writer" "$reader" 2>/dev/null
wait 2>/dev/null
rm -f /tmp/hs-fifo
