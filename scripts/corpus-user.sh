#!/usr/bin/env bash
# The userspace corpus: real fixes for Debian 12's OpenSSL
# (tests/userspace-corpus/openssl/manifest.txt; the default, or argument
# `openssl`) or glibc (tests/userspace-corpus/glibc/manifest.txt; argument
# `glibc`), each created with `hotsplice create --source-package`, applied
# to a running reproducer, checked to behave like the fixed library, and
# undone. OpenSSL's reproducers use the libcrypto.so.3 of Debian's libssl3
# .deb and are compared with the fixed package's; glibc's use the installed
# /lib/x86_64-linux-gnu/libc.so.6 (only the reproducer is patched, with
# --pid) and are compared with what upstream's test of the fix expects.
# Prints a table (Markdown) of the results; docs/userspace-corpus.md records
# the last ones. A fix create refuses is a result (the table says why); the
# script fails when a patch that was made does not apply, does not make the
# process behave as the fixed library, or does not undo.
#
# Slow: the first run fetches the source package and builds it as Debian
# does (on 2 quiet cores about 10 minutes for OpenSSL, 8 for glibc's libc
# pass; 26 and 37 on a loaded machine);
# the prepared tree (/build/reproducible-path/SOURCE-UPSTREAM) and its
# records ($HOTSPLICE_CACHE/user/) are kept, and each fix then compiles only
# the objects it touches. Not part of scripts/test.sh; e2e_user.rs covers
# the same paths (stripped target, version script, ar/ld -r/objcopy) on a
# library built in the test. Needs root (ptrace, apt-get).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
export HOTSPLICE_CACHE="${HOTSPLICE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/hotsplice}"
mkdir -p "$HOTSPLICE_CACHE/user"
# corpus-user.sh [openssl|glibc] [NAME...]: the whole corpus, or the named fixes.
which=${1:-openssl}
only=("${@:2}")
case "$which" in
openssl)
  corpus=tests/userspace-corpus/openssl
  source_pkg="openssl=3.0.20-1~deb12u2"
  binary_deb="libssl3=3.0.20-1~deb12u2"
  fixed_deb="libssl3=3.0.22-1~deb12u2"
  # What building Debian's OpenSSL needs, and the headers the reproducers use.
  build_deps=(dpkg-dev debhelper m4 bc libssl-dev gcc make patch python3)
  libs=-lcrypto
  ;;
glibc)
  corpus=tests/userspace-corpus/glibc
  source_pkg="glibc=2.36-9+deb12u14"
  # The installed libc6 must be the version whose source is built.
  have=$(dpkg-query -W -f '${Version}' libc6)
  if [ "$have" != "${source_pkg#glibc=}" ]; then
    echo "corpus-user.sh: the installed libc6 is $have, the corpus is for ${source_pkg#glibc=}" >&2
    exit 1
  fi
  # glibc's Build-Depends for its libc pass (profile nobiarch).
  build_deps=(dpkg-dev debhelper gettext xz-utils file quilt autoconf gawk rdfind
    symlinks netbase gperf bison linux-libc-dev libaudit-dev libcap-dev
    libselinux1-dev binutils-for-host g++-12 python3 libgd-dev po-debconf gcc make patch)
  libs=
  ;;
*)
  echo "usage: corpus-user.sh [openssl|glibc] [NAME...]" >&2
  exit 2
  ;;
esac

need=()
for pkg in "${build_deps[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ "${#need[@]}" -gt 0 ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

cargo build -q -p hotsplice-cli --locked
hs="$repo/target/debug/hotsplice"

work=$(mktemp -d /tmp/hotsplice-corpus.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# OpenSSL: the exact .debs, the one patched and the fixed one to compare
# with. glibc: the installed library.
debs="$HOTSPLICE_CACHE/user/debs"
libdir_of() {
  local spec=$1 dir="$debs/${1//[=~:]/_}"
  if [ ! -d "$dir/usr" ]; then
    mkdir -p "$debs"
    (cd "$debs" && apt-get download -qq "$spec" 2>/dev/null)
    dpkg-deb -x "$debs/$(echo "$spec" | sed 's/=/_/; s/:/%3a/')"_*.deb "$dir"
  fi
  echo "$dir/usr/lib/x86_64-linux-gnu"
}
if [ "$which" = openssl ]; then
  lib=$(libdir_of "$binary_deb")
  fixed=$(libdir_of "$fixed_deb")
  target="$lib/libcrypto.so.3"
else
  lib= fixed=
  target=/lib/x86_64-linux-gnu/libc.so.6
fi

# A private hotsplice configuration that trusts a key made for this run.
export HOTSPLICE_CONFIG_DIR="$work/etc" HOTSPLICE_STATE_DIR="$work/state" HOTSPLICE_RUN_DIR="$work/run"
mkdir -p "$work/etc/keys" "$work/state" "$work/run" "$work/key"
"$hs" keygen -o "$work/key" corpus >/dev/null
cp "$work/key/corpus.pub" "$work/etc/keys/"

# The first line equal to $2 that the reproducer writes to $1 after line $3.
wait_line() {
  local file=$1 want=$2 after=${3:-0} i
  for i in $(seq 1 200); do
    if tail -n +"$((after + 1))" "$file" | grep -qx -- "$want"; then return 0; fi
    sleep 0.05
  done
  return 1
}

echo "| fix | CVE | functions | created | create time | applied | stop time | before → after | undone |"
echo "|---|---|---|---|---|---|---|---|---|"
total=0 ok=0 bad=0
while IFS='|' read -r name cve files functions before after; do
  case "$name" in ''|'#'*) continue ;; esac
  if [ "${#only[@]}" -gt 0 ] && ! printf '%s\n' "${only[@]}" | grep -qx -- "$name"; then continue; fi
  total=$((total + 1))
  exe="$work/$name"
  # shellcheck disable=SC2086
  gcc -O1 -o "$exe" "$corpus/repro/$name.c" $libs
  # The fixed package behaves as AFTER, the unfixed as BEFORE (glibc: no
  # fixed package; AFTER is what upstream's test of the fix expects).
  if [ -n "$fixed" ]; then
    got_fixed=$(LD_LIBRARY_PATH="$fixed" timeout 5 "$exe" 2>/dev/null | head -1 || true)
    compared=" (fixed .deb: $got_fixed)"
  else
    got_fixed=$after compared=
  fi
  out="$work/$name.out"
  if [ -n "$lib" ]; then
    LD_LIBRARY_PATH="$lib" "$exe" >"$out" 2>/dev/null &
  else
    "$exe" >"$out" 2>/dev/null &
  fi
  pid=$!
  pids+=("$pid")
  row="| $name | $cve | $functions"
  if ! wait_line "$out" "$before" || [ "$got_fixed" != "$after" ]; then
    echo "$row | not run: the reproducer does not print $before unpatched and $after on the fixed package ($got_fixed) | | | | | |"
    bad=$((bad + 1))
    continue
  fi
  start=$(date +%s.%N)
  if ! created=$("$hs" create --source-package "$source_pkg" --patch "$corpus/$name.diff" \
      --target "$target" --sign "$work/key/corpus.key" --json \
      --description "$cve: $name" -o "$work/patches-$name" 2>"$work/$name.create"); then
    echo "$row | no: $(tail -1 "$work/$name.create" | sed 's/|/\\|/g') | | | | | |"
    continue
  fi
  secs=$(echo "$(date +%s.%N) - $start" | bc)
  patch=$(echo "$created" | python3 -c 'import json, sys; print(json.load(sys.stdin)[0]["path"])')
  # The functions the patch replaces, as create found them.
  got=$(echo "$created" | python3 -c 'import json, sys; print(" ".join(json.load(sys.stdin)[0]["functions"]))')
  row="| $name | $cve | $got"
  mark=$(wc -l <"$out")
  if ! applied=$("$hs" user apply --pid "$pid" "$patch" 2>&1); then
    echo "$row | yes | ${secs%.*} s | no: $(echo "$applied" | tail -1) | | | |"
    bad=$((bad + 1))
    continue
  fi
  stop=$(echo "$applied" | grep -o 'stopped for [0-9.]* ms' | head -1 | sed 's/stopped for //')
  if wait_line "$out" "$after" "$mark"; then flip="$before → $after$compared"; else flip="no change"; fi
  id=$("$hs" info --json "$patch" | sed -n 's/.*"id": *"\([^"]*\)".*/\1/p' | head -1)
  mark=$(wc -l <"$out")
  if "$hs" user undo --pid "$pid" "$id" >/dev/null 2>&1 && wait_line "$out" "$before" "$mark"; then undone=yes; else undone=no; fi
  echo "$row | yes | ${secs%.*} s | yes | $stop | $flip | $undone |"
  if [ "$flip" != "no change" ] && [ "$undone" = yes ]; then ok=$((ok + 1)); else bad=$((bad + 1)); fi
  kill "$pid" 2>/dev/null || true
done <"$corpus/manifest.txt"
echo
if [ "$which" = glibc ]; then
  tree=/build/reproducible-path/glibc-2.36
  echo "build-id of the pre-fix build's libc.so: $(readelf -n "$tree/build-tree/amd64-libc/libc.so" 2>/dev/null | sed -n 's/.*Build ID: //p'); of $target: $(readelf -n "$target" | sed -n 's/.*Build ID: //p')"
fi
echo "$ok of $total fixes created, applied, behaving as the fixed library, and undone; $((total - ok - bad)) refused by create ($(uptime | sed 's/.*load/load/'))."
[ "$bad" -eq 0 ]
