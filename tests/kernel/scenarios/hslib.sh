#!/bin/sh
# Helpers sourced by the hotsplice kernel-client scenarios (hs-*.sh); not a
# scenario itself. /etc/hs-test.env (written by the host test) names the
# patch files, their IDs and modules, and sets HOTSPLICE_STATE_DIR /
# HOTSPLICE_CONFIG_DIR.
# shellcheck disable=SC1091
. /etc/hs-test.env
hs() { echo "HSTEST $*"; }

# hsrun KEY CMD...: run CMD with its output in a file (so this shell waits in
# wait4, not in pipe_read), print every output line as "HSTEST KEY-out=LINE"
# and the exit status as "HSTEST KEY-rc=N".
hsrun() {
    _k=$1; shift
    "$@" > /tmp/hsrun.out 2>&1
    _rc=$?
    while IFS= read -r _l; do hs "$_k-out=$_l"; done < /tmp/hsrun.out
    hs "$_k-rc=$_rc"
    return $_rc
}

# modules loaded whose name starts with hs_lp_ (the test livepatches)
hs_lsmod() { grep -o '^hs_[a-z0-9_]*' /proc/modules | tr '\n' ' ' | sed 's/ $//'; }
# patches known to the kernel's livepatch core
hs_klp() {
    _s=
    for _p in /sys/kernel/livepatch/*; do [ -e "$_p" ] && _s="$_s ${_p##*/}"; done
    echo "${_s# }"
}
