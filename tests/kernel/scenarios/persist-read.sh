#!/bin/sh
# Scenario: read back the token written by persist-write in an earlier boot.
hs() { echo "HSTEST $*"; }
grep -q ' /mnt ' /proc/mounts || { hs "persist-read=no-disk"; exit 1; }
hs "persist-read=$(cat /mnt/hotsplice/token 2>/dev/null || echo missing)"
