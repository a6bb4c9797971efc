#!/usr/bin/env bash
# Random-kill soak: hotsplice is SIGKILLed after a random delay, hundreds of
# times, while it applies or undoes a patch in a target whose three other
# threads call the patched functions all the time (tests/fixtures/spin_threads,
# which aborts on any result that is neither the old nor the new code's), and
# while its daemon patches a burst of new processes. After every kill the
# target must be alive, no thread of it stopped or traced, and the next
# command must recover and leave nothing behind.
#
#   bash scripts/soak-kill.sh [RUNS] [BURSTS]     (default 300 runs, 20 bursts)
#
# Prints a summary line per part; exits non-zero on the first harm done.
# Needs root (ptrace). Everything lives in a temporary directory.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${1:-300}"
BURSTS="${2:-20}"
cargo build --quiet --release --locked -p hotsplice-cli
HS="${CARGO_TARGET_DIR:-$PWD/target}/release/hotsplice"
T="$(mktemp -d /tmp/hotsplice-soak.XXXXXX)"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  if [ -n "${DAEMON:-}" ]; then kill -9 "$DAEMON" 2>/dev/null || true; fi
  wait 2>/dev/null || true
  rm -rf "$T"
}
trap cleanup EXIT
export HOTSPLICE_CONFIG_DIR="$T/etc" HOTSPLICE_STATE_DIR="$T/state" HOTSPLICE_RUN_DIR="$T/run"
mkdir -p "$T/etc/keys" "$T/state" "$T/run" "$T/sign"
"$HS" keygen -o "$T/sign" soak >/dev/null
cp "$T/sign/soak.pub" "$T/etc/keys/"
cp -r tests/fixtures/spin_threads/src "$T/src"
make -s -C "$T/src" >/dev/null
PATCH="$("$HS" create --sign "$T/sign/soak.key" --patch tests/fixtures/spin_threads/fix.diff -o "$T" "$T/src" | head -1)"
ID="$("$HS" info --json "$PATCH" | sed -n 's/.*"id": "\([a-z0-9]*\)".*/\1/p' | head -1)"

fail() { echo "soak: HARM: $*" >&2; exit 1; }

# The target runs, no thread is stopped or traced, and it prints only the
# old or the new results.
check_target() {
  local pid=$1 out=$2 what=$3
  kill -0 "$pid" 2>/dev/null || fail "$what: target $pid died ($(tail -2 "$out.err" 2>/dev/null))"
  for s in /proc/"$pid"/task/*/status; do
    grep -q '^TracerPid:[[:space:]]*0$' "$s" || fail "$what: a thread of $pid is still traced"
    ! grep -q '^State:[[:space:]]*[tT]' "$s" || fail "$what: a thread of $pid is left stopped"
  done
  local n
  n=$(wc -l <"$out")
  sleep 0.06
  [ "$(wc -l <"$out")" -gt "$n" ] || fail "$what: target $pid stopped printing"
  ! grep -qv -e '^a=8 b=9$' -e '^a=10 b=12$' -e '^a=10 b=9$' -e '^a=8 b=12$' "$out" ||
    fail "$what: target printed $(grep -v -e '^a=8 b=9$' -e '^a=10 b=12$' -e '^a=10 b=9$' -e '^a=8 b=12$' "$out" | head -1)"
}

# The next command recovers; nothing is left behind.
check_recovered() {
  local pid=$1 what=$2
  "$HS" -q user remove --all --pid "$pid" >/dev/null 2>"$T/rm.err" || fail "$what: remove after the kill failed: $(cat "$T/rm.err")"
  # Records only: a temporary file of a write the kill cut short is not one.
  [ -z "$(ls "$T/state/journal" 2>/dev/null)" ] || fail "$what: journal not cleared: $(ls "$T/state/journal"; cat "$T/rm.err")"
  ! grep -q 'hotsplice:' /proc/"$pid"/maps || fail "$what: patch mapping left in $pid"
}

# Starts a target (not in a subshell, so that cleanup knows it): its pid
# is in $TARGET.
start_target() {
  local out=$1
  "$T/src/prog" >>"$out" 2>"$out.err" &
  TARGET=$!
  PIDS+=("$TARGET")
}

# Part 1: apply and undo, killed after a random delay.
out="$T/target.out"
start_target "$out"
pid=$TARGET
sleep 0.1
killed=0 completed=0
for ((i = 1; i <= RUNS; i++)); do
  if ((i % 2 == 0)); then
    "$HS" -q user apply --pid "$pid" "$PATCH" >/dev/null 2>&1 || fail "run $i: apply before undo failed"
    cmd=(user undo --pid "$pid" "$ID")
  else
    cmd=(user apply --pid "$pid" "$PATCH")
  fi
  "$HS" -q "${cmd[@]}" >/dev/null 2>&1 &
  hs=$!
  sleep "$(printf '0.%03d' $((RANDOM % 7)))"
  kill -9 "$hs" 2>/dev/null || true
  # 137: the kill came first; otherwise hotsplice had already exited.
  st=0
  wait "$hs" 2>/dev/null || st=$?
  if [ "$st" -eq 137 ]; then killed=$((killed + 1)); else completed=$((completed + 1)); fi
  check_target "$pid" "$out" "run $i (${cmd[1]})"
  check_recovered "$pid" "run $i (${cmd[1]})"
  : >"$out"
done
echo "soak: $RUNS apply/undo runs on a 4-thread busy target: $killed killed mid-way, $completed finished first; target alive and consistent after every one"

# Part 2: the daemon, killed while it patches a burst of new processes.
"$HS" -q user install "$PATCH" >/dev/null
harmed=0 total=0
for ((b = 1; b <= BURSTS; b++)); do
  "$HS" daemon --rescan 0.05 >/dev/null 2>&1 &
  d=$!
  DAEMON=$d
  sleep 0.05
  burst=()
  for ((k = 0; k < 6; k++)); do
    o="$T/burst$k.out"
    start_target "$o"
    burst+=("$TARGET:$o")
  done
  sleep "$(printf '0.%03d' $((RANDOM % 40)))"
  kill -9 "$d" 2>/dev/null || true
  wait "$d" 2>/dev/null || true
  for e in "${burst[@]}"; do
    p=${e%%:*}
    o=${e#*:}
    total=$((total + 1))
    check_target "$p" "$o" "burst $b"
    check_recovered "$p" "burst $b"
    kill -9 "$p"
    wait "$p" 2>/dev/null || true
  done
  # Only live processes stay listed for the cleanup (pids get reused).
  PIDS=("$pid")
done
echo "soak: $BURSTS daemon bursts killed at random, $total new processes: none harmed, each recovered"
