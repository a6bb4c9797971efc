#!/usr/bin/env bash
# Fuzzes hotsplice-server's API against the OpenAPI document it serves
# (schemathesis, installed by setup.sh into $HOTSPLICE_CACHE/venv): every
# operation, with generated valid and invalid input, as an admin and as a
# registered machine; any 5xx answer fails the run. The server runs on
# 127.0.0.1 from a private data directory and is stopped at the end.
# API_FUZZ_SECONDS (default 60) bounds each pass.
set -euo pipefail
cd "$(dirname "$0")/.."
export HOTSPLICE_CACHE="${HOTSPLICE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/hotsplice}"
st="$HOTSPLICE_CACHE/venv/bin/schemathesis"
[ -x "$st" ] || { echo "api-fuzz: $st missing; run scripts/setup.sh" >&2; exit 1; }
bin="${HOTSPLICE_SERVER_BIN:-target/debug/hotsplice-server}"
[ -x "$bin" ] || cargo build -q --locked -p hotsplice-server
seconds="${API_FUZZ_SECONDS:-60}"

work="$(mktemp -d)"
server_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

"$bin" init --data "$work/data" >"$work/init.txt"
field() { sed -n "s/^$1:[[:space:]]*//p" "$work/init.txt" | head -1; }
user="$(field api-user)"; key="$(field api-key)"; access="$(field access-key)"
"$bin" run --data "$work/data" --listen 127.0.0.1:0 >"$work/out.txt" 2>"$work/err.txt" &
server_pid=$!
url=""
for _ in $(seq 1 100); do
  url="$(grep -o 'http://[0-9.:]*' "$work/out.txt" | head -1 || true)"
  [ -n "$url" ] && break
  sleep 0.1
done
[ -n "$url" ] || { echo "api-fuzz: the server did not start:" >&2; cat "$work/err.txt" >&2; exit 1; }

# A registered machine, so that machine calls have real credentials.
reg="$(curl -sf -X POST "$url/api/v2/register" -H 'Content-Type: application/json' \
  -d "{\"access_key\":\"$access\",\"hostname\":\"fuzz.example.com\"}")"
machine_key="$(python3 -c 'import json,sys; print(json.load(sys.stdin)["machine_key"])' <<<"$reg")"

# One worker: schemathesis (hypothesis) describing its strategies parses
# Python source with `ast` from worker threads, which CPython 3.11 can fail
# with "AST constructor recursion depth mismatch" (a runtime error of the
# tool, not an answer of the server).
run() {
  local log="$work/pass.log" attempt
  for attempt in 1 2; do
    if "$st" --no-color run "$url/api/v2/openapi.json" --checks not_a_server_error \
      --max-time "$seconds" --workers 1 --seed 1 "$@" >"$log" 2>&1; then
      tail -n 25 "$log"; return 0
    fi
    cat "$log"
    # A runtime error of the tool itself (and no server error found) is
    # tried once more; any 5xx fails at once.
    if grep -q "Server error" "$log" || ! grep -q "Runtime Error" "$log"; then
      return 1
    fi
    echo "api-fuzz: schemathesis failed by itself (attempt $attempt), not the server"
  done
  return 1
}
echo "api-fuzz: as an API user ($seconds s)"
run -H "X-Uptrack-User: $user" -H "X-Uptrack-Key: $key"
echo "api-fuzz: as a machine ($seconds s)"
run -H "Authorization: Bearer $machine_key"
echo "api-fuzz: without credentials ($seconds s)"
run
kill -0 "$server_pid" || { echo "api-fuzz: the server died" >&2; cat "$work/err.txt" >&2; exit 1; }
