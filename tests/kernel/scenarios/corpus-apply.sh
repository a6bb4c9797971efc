#!/bin/sh
# Scenario (crates/hotsplice-cli/tests/kernel_corpus.rs): real stable fixes
# of tests/kernel/corpus built by `hotsplice create --kernel` for the pinned
# kernel (CORPUS_FILES, modules CORPUS_MODS; the modules they patch were
# loaded by init), applied together by `hotsplice kernel apply`, each
# object's `patched` flag, then all removed. The reproducers in /repro
# (REPROS: name=program ...) run before the apply, after it and after the
# removal.
# shellcheck disable=SC1091
. /tests/hslib.sh
repros() {
    for r in $REPROS; do
        hsrun "repro ${r%%=*} $1" "/repro/${r#*=}"
    done
}
repros before
# shellcheck disable=SC2086
hsrun corpus-apply hotsplice kernel apply $CORPUS_FILES
for m in $CORPUS_MODS; do
    for o in /sys/kernel/livepatch/"$m"/*/; do
        [ -f "$o/patched" ] && hs "corpus-patched $m $(basename "$o")=$(cat "$o/patched")"
    done
    hs "corpus-transition $m=$(cat /sys/kernel/livepatch/"$m"/transition)"
done
repros applied
hsrun corpus-remove hotsplice kernel remove --all
hs "corpus-klp-after=$(hs_klp)"
hs "corpus-lsmod-after=$(hs_lsmod)"
repros removed
