#!/bin/sh
# Scenario: write a token (from hstoken=... on the kernel command line) to the state disk.
hs() { echo "HSTEST $*"; }
grep -q ' /mnt ' /proc/mounts || { hs "persist-write=no-disk"; exit 1; }
tok=
# shellcheck disable=SC2013
for w in $(cat /proc/cmdline); do
    case $w in hstoken=*) tok=${w#hstoken=} ;; esac
done
mkdir -p /mnt/hotsplice
echo "$tok" > /mnt/hotsplice/token
sync
hs "persist-write=$tok"
