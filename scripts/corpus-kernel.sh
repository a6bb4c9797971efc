#!/usr/bin/env bash
# Build the kernel corpus (tests/kernel/corpus/*.diff: real upstream stable
# fixes, each the per-file delta between Debian's linux 6.1.176-1 and
# 6.1.187-1) with `hotsplice create --kernel` against the pinned base
# 6.1.176-1 (linux-image-6.1.0-50-amd64), print a table (fix, created or the
# refusal) and the share created without hand-written code, and write the
# results to docs/kernel-corpus.md.
#
# Usage: scripts/corpus-kernel.sh [-n] [-q] [-o DOC] [FIX.diff...]
#   -n      do not write the doc (just print)
#   -q      then boot the pinned kernel under QEMU and load every created
#           livepatch module together (scenario corpus-load: the patched
#           modules the initramfs carries are loaded first), record each
#           one's `patched` flags, disable and unload them all
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
# .ci/run creates, applies and removes the same fixes in kernel_corpus.rs;
# this script writes the doc. The first run downloads ~250 MB, prepares the
# tree and compiles every fixed file twice; later runs reuse the objects
# create keeps beside the tree (see docs/kernel-corpus.md for times).
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
export HOTSPLICE_CACHE="${HOTSPLICE_CACHE:-$REPO/.cache}"
BASE=6.1.176-1
FIXED=6.1.187-1
DOC="$REPO/docs/kernel-corpus.md"
WRITE=1 QEMU=0
while getopts "nqo:" opt; do
    case $opt in n) WRITE=0 ;; q) QEMU=1 ;; o) DOC=$OPTARG ;; *) sed -n '9,17p' "$0" >&2; exit 2 ;; esac
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

# Reproducers run in the guest before the patches load, while loaded and
# after unloading: "name program fix what-it-prints".
REPROS=(
    "sctp_auth sctp_auth_chunks 05-net-sctp_auth how many chunk types SCTP_AUTH_CHUNK accepts (the fix: 4 fewer)"
    "xt_u32 xt_u32_shift 11-net-xt_u32 whether a u32 rule shifting by 40 bits is installed (the fix: refused)"
    "netlink netlink_walk 32-lib-rhashtable reads /proc/net/netlink through rhashtable_walk_start_check (redirected directly; the same output throughout)"
    "keyring keyring_walk 33-lib-assoc_array adds and finds 500 keys in a keyring through assoc_array_walk (redirected directly; the same output throughout)"
)
# modules the reproducers need besides the patched ones
REPRO_MODULES="iptable_filter"
if [ $# -gt 0 ]; then FIXES=("$@"); else FIXES=("$REPO"/tests/kernel/corpus/[0-9]*.diff); fi
MANIFEST="$REPO/tests/kernel/corpus/manifest.tsv"
ids=() rows=() mods=()
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
        mods+=("$(jq -r .module "$OUT/$id.json")")
        result="created: $(jq -r '"\(.functions | join(", ")) in \(.objects | join(", "))\(if (.direct | length) > 0 then " (redirected directly, no ftrace entry: \(.direct | join(", ")))" else "" end)\(if (.skipped | length) > 0 then " (left as they are, only __LINE__ moved: \(.skipped | join(", ")))" else "" end)"' "$OUT/$id.json")"
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
    ids+=("$id"); rows+=("$row")
    echo "$row"
done
t_end=$(now)

# --- optionally: all created modules together in the pinned kernel --------
qsum=""
if [ $QEMU = 1 ] && [ $ok -gt 0 ]; then
    mkdir -p "$W/patches"
    cp "$OUT"/*/hs_*.ko "$W/patches/"
    # the modules the fixes patch, loaded by init before the scenario
    objs=$(jq -r '.objects[] | select(. != "vmlinux")' "$OUT"/*.json 2>/dev/null | sort -u | tr '\n' ' ')
    # the reproducers (tests/kernel/repro), static: the guest has no libc
    mkdir -p "$W/repro"
    names=()
    for r in "${REPROS[@]}"; do
        read -r name prog _ <<<"$r"
        gcc -static -O2 -Wall -Werror -o "$W/repro/$prog" "$REPO/tests/kernel/repro/$prog.c"
        names+=("$name=$prog")
    done
    printf "REPROS='%s'\n" "${names[*]}" > "$W/hs-test.env"
    HOTSPLICE_KERNEL_VERSION=$BASE "$REPO/scripts/kernel/mkinitrd.sh" \
        -m "virtio_pci virtio_blk ext4 $REPRO_MODULES $objs" "$W/initrd.zst" \
        "$REPO/tests/kernel/scenarios:/tests" "$W/patches:/patches" "$W/repro:/repro" \
        "$W/hs-test.env:/etc/hs-test.env" >&2
    set +e
    HOTSPLICE_KERNEL_VERSION=$BASE "$REPO/scripts/kernel/boot.sh" -t 900 -m 2G -s 2 \
        -l "$OUT/qemu-serial.log" -a "hstest=corpus-load" "$W/initrd.zst" > "$OUT/qemu.hstest"
    set -e
    tr -d '\r' < "$OUT/qemu-serial.log" | sed -n 's/^HSTEST //p' > "$OUT/qemu.hstest"
    t_qemu=$(now)
    applied=0
    for i in "${!ids[@]}"; do
        json="$OUT/${ids[$i]}.json"
        [ -s "$json" ] || continue
        m=$(jq -r .module "$json")
        rc=$(sed -n "s/^corpus-insmod $m-rc=//p" "$OUT/qemu.hstest")
        flags=$(sed -n "s/^corpus-patched $m \(.*\)=\(.*\)$/\1=\2/p" "$OUT/qemu.hstest" | tr '\n' ' ' | sed 's/ $//')
        un=$(sed -n "s/^corpus-rmmod $m-rc=//p" "$OUT/qemu.hstest")
        if [ "$rc" = 0 ]; then
            applied=$((applied + 1))
            a="loaded, patched: ${flags:-none}; unloaded: $([ "$un" = 0 ] && echo yes || echo "no (rc ${un:-?})")"
        else
            a="load failed (rc ${rc:-?}): $(sed -n "s/^corpus-insmod $m-out=//p" "$OUT/qemu.hstest" | tr '\n' ' ' | sed 's/|/\\|/g')"
        fi
        rows[$i]="${rows[$i]} $a |"
    done
    for i in "${!rows[@]}"; do
        case "${rows[$i]}" in *" | created: "*) ;; *) rows[$i]="${rows[$i]} — |" ;; esac
    done
    reprows=()
    for r in "${REPROS[@]}"; do
        read -r name prog fix what <<<"$r"
        out() { sed -n "s/^repro $name $1-out=//p" "$OUT/qemu.hstest" | tr '\n' ' ' | sed 's/ $//; s/|/\\|/g'; }
        reprows+=("| $fix | \`tests/kernel/repro/$prog.c\`: $what | $(out before) | $(out applied) | $(out removed) |")
    done
    after=$(sed -n 's/^corpus-klp-after-disable=//p' "$OUT/qemu.hstest")
    qsum="in QEMU ($KVER, $(secs "$t_end" "$t_qemu") s): $applied of $ok created modules loaded together; after disabling: livepatches left '${after}', modules left '$(sed -n 's/^corpus-lsmod-after=//p' "$OUT/qemu.hstest")'"
    echo "$qsum"
fi
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

EOF
        if [ -n "$qsum" ]; then
            printf '%s.\n\n' "$qsum"
            echo '| fix | CVE | file | seconds | result (functions replaced, in which objects; or the refusal) | in QEMU |'
            echo '|---|---|---|---|---|---|'
        else
            echo '| fix | CVE | file | seconds | result (functions replaced, in which objects; or the refusal) |'
            echo '|---|---|---|---|---|'
        fi
        printf '%s\n' "${rows[@]}"
        if [ -n "$qsum" ]; then
            cat <<EOF

## Reproducers in the guest

Small static C programs (\`tests/kernel/repro/\`) that observe a fix's bug
from user space, run in the same boot before the patches are loaded, while
they are, and after they were disabled and unloaded. The CI test
(\`kernel_corpus.rs\`) runs them around \`hotsplice kernel apply\` and
\`kernel remove\` and fails unless they show the fixed behaviour only while
patched.

| fix | reproducer | before | patched | after removal |
|---|---|---|---|---|
EOF
            printf '%s\n' "${reprows[@]}"
        fi
        cat <<EOF

Times of this run: fetch $(secs "$t0" "$t_fetch") s, probe $(secs "$t_fetch" "$t_probe") s,
creates $(secs "$t_probe" "$t_end") s (the first create prepares the tree)${t_qemu:+, QEMU $(secs "$t_end" "$t_qemu") s}, on the
shared 2-core machine (load at the end: $(uptime | sed 's/.*load average: //')).

## How the fixes were chosen

\`scripts/kernel/corpus-candidates.py OLD NEW changelog.Debian 6.1.176-1\` lists
the \`.c\` files that differ between the two trees and whose name is the
subject prefix of exactly one changelog entry between the versions; from
those, files in varied subsystems that Debian's amd64 configuration builds
were picked (\`… PICKS OUTDIR\` writes the diffs and the manifest). The
name match is a heuristic; candidates whose delta did not compile on the
base were dropped, as their delta holds more than that one commit:
\`drivers/net/ppp/pppoe.c\` (uses \`ppp_channel.direct_xmit\` of another ppp
commit), \`drivers/net/geneve.c\` and \`net/ipv4/ip_gre.c\` (use
\`rtnl_dev_link_net_capable()\`, added to a header by another commit),
\`net/netfilter/nft_payload.c\` (a later \`nft_parse_register_load(ctx, …)\`
API change). "Nothing to patch" means the fixed file compiles to the same
code under Debian's configuration (e.g. \`= {}\` for a stack variable with
\`CONFIG_INIT_STACK_ALL_ZERO=y\`): the running kernel already behaves as fixed.

## In CI, and what the whole corpus costs

\`.ci/run\` runs the whole corpus: \`cargo test -p hotsplice-cli --test
kernel_corpus\` reads \`tests/kernel/corpus/\`, creates every fix, and expects
exactly the two outcomes above for the fixes that are not created
(\`03-net-nexthop\`: create's own "the fix changes no compiled code";
\`49-net-xt_connmark\`: the refusal naming \`connmark_tg_reg\`); any other
failure, or one of these two created, fails the test. It applies every
created patch together with \`hotsplice kernel apply\` in one boot of the
pinned kernel on 2 vCPUs, checks every object's \`patched\` flag and that each
direct function's entry became a jump and got its bytes back, runs the
reproducers, removes them all, checks that no livepatch or module is left,
and prints the share. \`create --kernel\` keeps every object it compiles
beside the prepared tree and reuses it only while its inputs are byte for
byte the same (docs/kernel.md, step 3), so a warm machine compiles nothing
again: 51 creates took 154 s warm against 569 s with nothing kept (load
2–9), and the boot that applies and removes 49 patches about 135 s (two
livepatch transitions per patch). This script builds the same corpus and
writes this page: on a fresh machine ~250 MB of packages, fetch about
1 min, probe boot ~20 s, the tree's first preparation plus two compiles per
fix (~10 s each, ~10 min for the corpus), QEMU load ~2–4 min;
\`scripts/corpus-kernel.sh -q FIX…\` runs a subset.

## Refusals

- \`net/netfilter/xt_connmark.c\`: the fix points \`.checkentry\` of two
  entries of the \`connmark_tg_reg\` table at a new function: a change of
  existing, registered data, which the old code keeps using.

Carried and accepted forms worth knowing: \`lib/rhashtable.c\` and
\`lib/assoc_array.c\` are compiled without ftrace's entry call
(\`lib/Makefile\` removes \`CC_FLAGS_FTRACE\`), where the kernel's livepatch
redirects a function, so their changed functions are redirected directly:
the patch module's \`pre_patch\` callback writes a jump at the old entry
with the machine stopped, once no task's stack holds the function and the
entry holds the expected bytes, and \`post_unpatch\` takes it back
(docs/kernel.md, "Functions without an ftrace entry"); a \`.c\` file that another
\`#include\`s (\`kernel/sched/psi.c\` in \`build_utility.c\`) is compared in
the includer's object; \`__init\`/\`__exit\` code whose only difference is a
32-bit immediate equal to a line the fix moved (\`rbd_assert\`'s
\`__LINE__\` in \`rbd_slab_init\`) is the same code and stays; the once
flags of \`WARN_ONCE\`/\`printk_once\` (\`.data.once\`) are the patch's own
copies, new ones included — the only effect is that a message the
running kernel already printed may print once more from the patched code.
EOF
    } > "$DOC"
    echo "wrote $DOC" >&2
fi
