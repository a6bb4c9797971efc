#!/usr/bin/env bash
# Build the kernel corpus (tests/kernel/corpus/*.diff: real upstream stable
# fixes, each the per-file delta between Debian's linux 6.1.176-1 and
# 6.1.187-1) with `hotsplice create --kernel` against the pinned base
# 6.1.176-1 (linux-image-6.1.0-50-amd64), print a table (fix, created or the
# refusal) and the share created without hand-written code, and write the
# results to docs/kernel-corpus.md.
#
# Usage: scripts/corpus-kernel.sh [-n] [-o DOC] [FIX.diff...]
#   -n      do not write the doc (just print)
#   -o DOC  write the results there (default docs/kernel-corpus.md)
#   FIX     only these fixes (default: all of tests/kernel/corpus/*.diff)
# Env: HOTSPLICE_CACHE (default <repo>/.cache); the pinned kernel goes to
#      $HOTSPLICE_CACHE/kernel-6.1.176 (fetch.sh 6.1.176-1), the fixed
#      source to $HOTSPLICE_CACHE/kernel-6.1.187; the prepared tree is the
#      unpacked source of 6.1.176, prepared once by the first create.
#      HOTSPLICE_BIN  hotsplice binary (default target/debug/hotsplice)
#      HOTSPLICE_CORPUS_NO_PROBE=1  take positions from the image's
#      System.map placeholder instead of booting the kernel once (not useful)
#
# Not part of .ci/run: the first run downloads ~250 MB, prepares the tree
# and compiles every fixed file twice (see docs/kernel-corpus.md for times).
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
export HOTSPLICE_CACHE="${HOTSPLICE_CACHE:-$REPO/.cache}"
BASE=6.1.176-1
FIXED=6.1.187-1
DOC="$REPO/docs/kernel-corpus.md"
WRITE=1
while getopts "no:" opt; do
    case $opt in n) WRITE=0 ;; o) DOC=$OPTARG ;; *) sed -n '9,13p' "$0" >&2; exit 2 ;; esac
done
shift $((OPTIND - 1))
HS="${HOTSPLICE_BIN:-$REPO/target/debug/hotsplice}"
[ -x "$HS" ] || { echo "corpus-kernel.sh: no hotsplice binary at $HS (cargo build first)" >&2; exit 1; }
command -v jq >/dev/null || { echo "corpus-kernel.sh: needs jq (scripts/kernel/fetch.sh installs it)" >&2; exit 1; }
now() { date +%s.%N; }
secs() { printf '%.1f' "$(echo "$2 - $1" | bc)"; }

t0=$(now)
HOTSPLICE_KERNEL_VERSION=$BASE "$REPO/scripts/kernel/fetch.sh" "$BASE" >&2
HOTSPLICE_KERNEL_SOURCE_ONLY=1 "$REPO/scripts/kernel/fetch.sh" "$FIXED" >&2
t_fetch=$(now)
K="$HOTSPLICE_CACHE/kernel-${BASE%%-*}"
# shellcheck disable=SC1091
. "$K/env.sh"
CONFIG="$K/root/boot/config-$KVER"
# Positions of vmlinux symbols and the build-id come from the pinned kernel
# itself, booted once under QEMU (probe.sh; cached in $K/probe).
HOTSPLICE_KERNEL_VERSION=$BASE "$REPO/scripts/kernel/probe.sh" >&2
SYSMAP="$K/probe/kallsyms"
BUILD_ID=$(cat "$K/probe/build-id")
t_probe=$(now)

W=$(mktemp -d /tmp/corpus-kernel.XXXXXX)
trap 'rm -rf "$W"' EXIT
"$HS" keygen -o "$W" corpus >/dev/null
OUT="$K/corpus-out"
rm -rf "$OUT"; mkdir -p "$OUT"

if [ $# -gt 0 ]; then FIXES=("$@"); else FIXES=("$REPO"/tests/kernel/corpus/[0-9]*.diff); fi
MANIFEST="$REPO/tests/kernel/corpus/manifest.tsv"
rows=()
n=0 ok=0 none=0
for fix in "${FIXES[@]}"; do
    id=$(basename "$fix" .diff)
    n=$((n + 1))
    ts=$(now)
    set +e
    "$HS" create --kernel --json --sign "$W/corpus.key" --patch "$fix" --config "$CONFIG" \
        --kdir "$KDIR" --modules "$MODDIR" --system-map "$SYSMAP" \
        --build-id "$BUILD_ID" --release "$KVER" -o "$OUT/$id" "$KSRC" \
        > "$OUT/$id.json" 2> "$OUT/$id.log"
    rc=$?
    set -e
    te=$(now)
    if [ $rc = 0 ]; then
        ok=$((ok + 1))
        result="created: $(jq -r '"\(.functions | join(", ")) in \(.objects | join(", "))"' "$OUT/$id.json")"
    else
        # hotsplice's own message, and for a failed build the compiler's first error
        msg=$(grep -m1 '^hotsplice: error:' "$OUT/$id.log" | sed 's/^hotsplice: error: //; s/; last lines:$//')
        cc=$(grep -m1 -E '^[^ ]+:[0-9]+:[0-9]+: error:' "$OUT/$id.log" || true)
        [ -n "$msg" ] || msg="exit $rc: $(tail -n 1 "$OUT/$id.log")"
        if [ "$msg" = "the fix changes no compiled code" ]; then
            none=$((none + 1)); result="nothing to patch: $msg"
        else
            result="refused: $msg${cc:+ — $cc}"
        fi
        result=$(printf '%s' "$result" | tr '\n' ' ' | sed 's/|/\\|/g')
    fi
    cve=$(awk -F'\t' -v id="$id" '$1 == id { print $2 }' "$MANIFEST")
    file=$(awk -F'\t' -v id="$id" '$1 == id { print $3 }' "$MANIFEST")
    row="| $id | ${cve:--} | \`${file:-?}\` | $(secs "$ts" "$te") | $result |"
    rows+=("$row")
    echo "$row"
done
t_end=$(now)
# a fix that compiles to the same code under this configuration needs no patch:
# it counts neither as created nor as refused
need=$((n - none))
share=$(awk -v a=$ok -v b=$need 'BEGIN { printf "%.0f", b ? 100 * a / b : 0 }')
summary="created $ok of $need fixes that change code ($share %) with no hand-written code; $none of $n change no compiled code under this configuration; $((need - ok)) refused"
echo "$summary"
printf 'times: fetch %ss, probe %ss, creates %ss, total %ss (load: %s)\n' \
    "$(secs "$t0" "$t_fetch")" "$(secs "$t_fetch" "$t_probe")" "$(secs "$t_probe" "$t_end")" \
    "$(secs "$t0" "$t_end")" "$(uptime | sed 's/.*load average: //')"

if [ $WRITE = 1 ]; then
    {
        cat <<EOF
# Kernel corpus: real stable fixes built with \`create --kernel\`

Generated by \`scripts/corpus-kernel.sh\` on $(date -u +%Y-%m-%d) (do not edit by hand; rerun it).

Base (the "running" kernel): Debian's linux $BASE, \`$KVER\` (build-id
\`$BUILD_ID\`, positions from its \`/proc/kallsyms\` read by
\`scripts/kernel/probe.sh\`, modules from its image package). Fixes: the
per-file deltas between Debian's \`linux-source-6.1\` $BASE and $FIXED of
files that exactly one upstream stable commit listed in Debian's changelog
(6.1.177 … 6.1.187) changed; see \`tests/kernel/corpus/manifest.tsv\`.

**$summary.**

| fix | CVE | file | seconds | result (functions replaced, in which objects; or the refusal) |
|---|---|---|---|---|
EOF
        printf '%s\n' "${rows[@]}"
        cat <<EOF

Times of this run: fetch $(secs "$t0" "$t_fetch") s, probe $(secs "$t_fetch" "$t_probe") s,
creates $(secs "$t_probe" "$t_end") s (the first create prepares the tree), on the
shared 2-core machine (load at the end: $(uptime | sed 's/.*load average: //')).
EOF
    } > "$DOC"
    echo "wrote $DOC" >&2
fi
