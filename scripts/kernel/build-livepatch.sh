#!/usr/bin/env bash
# Build a hotsplice test livepatch module (tests/kernel/livepatches/*) for the
# guest kernel: like build-module.sh, with HS_BUILD_ID and HS_RELEASE (what
# the module's hotsplice_build_id / hotsplice_release modinfo says) taken
# from the probed kernel (scripts/kernel/probe.sh, cached) unless given.
#
# Usage: scripts/kernel/build-livepatch.sh [-b BUILD_ID] [-r RELEASE] SRCDIR [OUTDIR]
#   -b BUILD_ID  hex build-id to claim (e.g. another kernel's, for refusal tests)
#   -r RELEASE   release to claim
# Prints the .ko paths (build-module.sh's output).
set -euo pipefail
REPO="$(cd "$(dirname "$0")/../.." && pwd)"
BID='' REL=''
while getopts "b:r:" opt; do
    case $opt in
        b) BID=$OPTARG ;; r) REL=$OPTARG ;;
        *) echo "usage: $0 [-b BUILD_ID] [-r RELEASE] SRCDIR [OUTDIR]" >&2; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
[ $# -ge 1 ] || { echo "usage: $0 [-b BUILD_ID] [-r RELEASE] SRCDIR [OUTDIR]" >&2; exit 2; }
if [ -z "$BID" ] || [ -z "$REL" ]; then
    probe=$("$REPO/scripts/kernel/probe.sh")
    [ -n "$BID" ] || BID=$(echo "$probe" | sed -n 's/^build-id=//p')
    [ -n "$REL" ] || REL=$(echo "$probe" | sed -n 's/^release=//p')
fi
echo "build-livepatch.sh: $(basename "$1"): hotsplice_build_id=$BID hotsplice_release=$REL" >&2
# make imports the environment: the module's Makefile turns these into -D flags.
export HS_BUILD_ID=$BID HS_RELEASE=$REL
exec "$REPO/scripts/kernel/build-module.sh" "$@"
