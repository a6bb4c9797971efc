#!/usr/bin/env bash
# Sets everything up, then fixes a bug in a running program without
# restarting it: build the buggy server, start it, build a patch from the
# fix, apply it live, show it, undo it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --locked -q -p hotsplice-cli
HS="$PWD/target/release/hotsplice"
work=$(mktemp -d /tmp/hotsplice-demo.XXXXXX)
cleanup() { [ -n "${pid:-}" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
cp examples/demo/*.c examples/demo/*.h examples/demo/Makefile "$work/"
make -s -C "$work"
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

# The demo keeps its configuration and state in its own directory.
export HOTSPLICE_CONFIG_DIR="$work/etc" HOTSPLICE_STATE_DIR="$work/state" HOTSPLICE_RUN_DIR="$work/run"
"$HS" -q keygen -o "$work/signing" demo >/dev/null
mkdir -p "$HOTSPLICE_CONFIG_DIR/keys" && cp "$work/signing/demo.pub" "$HOTSPLICE_CONFIG_DIR/keys/"

step "1. the buggy server runs"
"$work/server" & pid=$!
sleep 1
step "2. build a signed patch from the fix: hotsplice create --sign demo.key --patch fix.diff $work"
patch_file=$("$HS" create --sign "$work/signing/demo.key" --patch examples/demo/fix.diff -o "$work/patches" "$work")
"$HS" info "$patch_file"
step "3. apply it to the running server: hotsplice user apply --pid $pid"
"$HS" user apply --pid "$pid" "$patch_file"
sleep 1
step "4. hotsplice user show --pid $pid"
"$HS" user show --pid "$pid"
id=$("$HS" info --json "$patch_file" | sed -n 's/.*"id": "\(.*\)".*/\1/p')
step "5. roll back: hotsplice user undo --pid $pid $id"
"$HS" user undo --pid "$pid" "$id"
sleep 1
step "done: the same process (pid $pid) ran unpatched, patched, unpatched"
