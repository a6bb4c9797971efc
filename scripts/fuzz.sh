#!/usr/bin/env bash
# Fuzzes the parsers of untrusted input: patch files (`patch_file`;
# `patch_body`, which frames its input with a valid checksum so that every
# input reaches the metadata checks; `patch_meta`, which builds the
# metadata field by field around the limits the checks keep) and the
# records read out of processes (`image_header`), and the busy check's stack
# walk on unwind tables and stacks from the input (`unwind_walk`). Besides "never panics",
# each target checks what the engine relies on of everything the parsers
# accept (fuzz/src/lib.rs).
#
# Each target runs for FUZZ_SECONDS (default 60) from the checked-in seeds
# (fuzz/seeds/<target>) and what earlier runs kept (fuzz/corpus/<target>,
# not checked in). A crash, leak, timeout or out-of-memory fails the script;
# the input is left in fuzz/artifacts/<target>/ (reproduce it with
# `cargo fuzz run <target> fuzz/artifacts/<target>/<file>` from fuzz/).
# FUZZ_TARGETS names targets (default: all); FUZZ_ARGS adds libFuzzer flags;
# FUZZ_TARGET_DIR is the build directory (default $HOTSPLICE_CACHE/fuzz-target,
# or fuzz/target when HOTSPLICE_CACHE is unset).
#
# cargo-fuzz needs nightly features of the compiler; on a stable toolchain
# RUSTC_BOOTSTRAP=1 enables them.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
seconds="${FUZZ_SECONDS:-60}"
# The instrumented build is slow (minutes on two cores); with HOTSPLICE_CACHE
# set (scripts/test.sh sets it) it is kept there, so a fresh checkout only
# rebuilds hotsplice's own crates, not their dependencies.
target_dir="${FUZZ_TARGET_DIR:-${HOTSPLICE_CACHE:+$HOTSPLICE_CACHE/fuzz-target}}"
target_dir="${target_dir:-target}"
targets="${FUZZ_TARGETS:-$(cargo fuzz list)}"
cargo fetch --locked
for t in $targets; do
    mkdir -p "corpus/$t"
    echo "== fuzz: $t for ${seconds}s"
    # shellcheck disable=SC2046,SC2086 # optional seeds; FUZZ_ARGS is a list of flags
    cargo fuzz run --target-dir "$target_dir" "$t" "corpus/$t" $(test -d "seeds/$t" && echo "seeds/$t") -- \
        -max_total_time="$seconds" -dict=dict/formats.dict -print_final_stats=1 \
        ${FUZZ_ARGS:-}
done
echo "== fuzz: no crash in ${targets//$'\n'/ }"
