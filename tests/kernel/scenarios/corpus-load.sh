#!/bin/sh
# Scenario (scripts/corpus-kernel.sh -q): the livepatch modules that
# `create --kernel` built for the corpus, loaded together into the pinned
# kernel (the modules they patch that the initramfs has are loaded first by
# init), each object's `patched` flag and the transition, then all disabled
# and unloaded. Loads the modules directly (insmod): what is tested is the
# created code in the real kernel, not hotsplice's client (kernel_vm.rs).
# The reproducers in /repro (REPROS: name=program ...) run before the
# modules are loaded, while they are, and after they are unloaded.
# shellcheck disable=SC1091
. /tests/hslib.sh
repros() {
    for r in ${REPROS:-}; do
        hsrun "repro ${r%%=*} $1" "/repro/${r#*=}"
    done
}
repros before
# wait_transitions: until no livepatch is in transition (the consistency
# model may need a few seconds, more with several CPUs), at most 60 s. The
# kernel refuses to enable or disable a patch while another transitions.
wait_transitions() {
    i=0
    while [ $i -lt 120 ]; do
        busy=0
        for t in /sys/kernel/livepatch/*/transition; do
            [ -f "$t" ] && [ "$(cat "$t")" != 0 ] && busy=1
        done
        [ $busy = 0 ] && return 0
        sleep 0.5; i=$((i + 1))
    done
}
for ko in /patches/*.ko; do
    m=$(basename "$ko" .ko)
    hsrun "corpus-insmod $m" insmod "$ko"
    wait_transitions
done
for p in /sys/kernel/livepatch/*/; do
    [ -d "$p" ] || continue
    m=$(basename "$p")
    for o in "$p"*/; do
        [ -f "$o/patched" ] && hs "corpus-patched $m $(basename "$o")=$(cat "$o/patched")"
    done
    hs "corpus-enabled $m=$(cat "$p/enabled") transition=$(cat "$p/transition")"
done
repros applied
for p in /sys/kernel/livepatch/*/; do
    [ -d "$p" ] && echo 0 > "$p/enabled"
    wait_transitions
done
i=0
while [ $i -lt 120 ] && [ -n "$(hs_klp)" ]; do sleep 0.5; i=$((i + 1)); done
hs "corpus-klp-after-disable=$(hs_klp)"
for ko in /patches/*.ko; do
    hsrun "corpus-rmmod $(basename "$ko" .ko)" rmmod "$(basename "$ko" .ko)"
done
hs "corpus-lsmod-after=$(hs_lsmod)"
repros removed
