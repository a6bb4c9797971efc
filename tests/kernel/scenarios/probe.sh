#!/bin/sh
# Scenario: record the running kernel's facts for `hotsplice create --kernel`
# (see scripts/kernel/probe.sh): the GNU build-id from /sys/kernel/notes,
# uname -r and /proc/kallsyms, written to /mnt/probe on the state disk and
# the first two printed.
hs() { echo "HSTEST $*"; }
grep -q ' /mnt ' /proc/mounts || { hs "probe=no-disk"; exit 1; }
mkdir -p /mnt/probe
# /sys/kernel/notes: ELF notes, each namesz(4) descsz(4) type(4) name desc,
# name and desc padded to 4 bytes; the build-id is type 3, name "GNU".
bid=$(od -An -v -tx1 /sys/kernel/notes | tr -s ' ' '\n' | grep . | awk '
    { b[n++] = $1 }
    function h(x,  k, v) { v = 0; for (k = 1; k <= length(x); k++) v = v * 16 + index("0123456789abcdef", substr(x, k, 1)) - 1; return v }
    function le32(i) { return h(b[i+3] b[i+2] b[i+1] b[i]) }
    END {
        i = 0
        while (i + 12 <= n) {
            nsz = le32(i); dsz = le32(i + 4); typ = le32(i + 8)
            name = ""
            for (j = 0; j < nsz - 1; j++) name = name sprintf("%c", h(b[i + 12 + j]))
            d = i + 12 + int((nsz + 3) / 4) * 4
            if (typ == 3 && name == "GNU") {
                s = ""; for (j = 0; j < dsz; j++) s = s b[d + j]; print s; exit
            }
            i = d + int((dsz + 3) / 4) * 4
        }
    }')
echo "$bid" > /mnt/probe/build-id
uname -r > /mnt/probe/release
cat /proc/kallsyms > /mnt/probe/kallsyms
sync
hs "probe-build-id=$bid"
hs "probe-release=$(uname -r)"
hs "probe-kallsyms-lines=$(wc -l < /mnt/probe/kallsyms)"
hs "probe-kallsyms-zero-addresses=$(grep -c '^0000000000000000 ' /mnt/probe/kallsyms)"
