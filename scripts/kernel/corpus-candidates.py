#!/usr/bin/env python3
"""List candidate fixes for the kernel corpus, and write chosen ones.

A candidate is a .c file that differs between two Debian kernel source trees
and whose name matches the subject prefix of exactly one upstream stable
commit listed in the newer package's debian changelog between the two
versions (so the per-file delta is that one commit). The match is a
heuristic: a commit whose subject does not name the file can still touch it
(04-net-pppoe was dropped for that: its delta also held a ppp_generic
change), so every chosen fix is built by scripts/corpus-kernel.sh.

Usage:
  corpus-candidates.py OLD_SRC NEW_SRC CHANGELOG OLD_VERSION        # list
  corpus-candidates.py OLD_SRC NEW_SRC CHANGELOG OLD_VERSION PICKS OUTDIR
PICKS has lines "NAME path/file.c"; OUTDIR gets NN-NAME.diff and manifest.tsv.
CHANGELOG is the uncompressed changelog.Debian of the newer linux-source.
"""
import filecmp
import os
import re
import subprocess
import sys


def entries(changelog, old_version):
    """(subject, stable release) of each changelog entry newer than old_version."""
    out, rel = [], None
    with open(changelog, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith(f"linux ({old_version})"):
                break
            m = re.search(r"ChangeLog-(\d+\.\d+\.\d+)", line)
            if m:
                rel = m.group(1)
            if line.startswith("    - "):
                out.append([line[6:].rstrip(), rel])
            elif line.startswith("      ") and out:
                out[-1][0] += " " + line.strip()
    return out


def matches(path, ents):
    stem = os.path.basename(path)[:-2]
    pat = re.compile(r"(?<![\w-])" + re.escape(stem) + r"(?![\w-])")
    prefix = [e for e in ents if pat.search(e[0].rsplit(": ", 1)[0])]
    anywhere = [e for e in ents if pat.search(e[0])]
    return prefix, anywhere


def delta(old, new, path):
    return subprocess.run(
        ["diff", "-up", "--label", "a/" + path, "--label", "b/" + path,
         os.path.join(old, path), os.path.join(new, path)],
        capture_output=True, text=True, check=False).stdout


def changed_c_files(old, new):
    for root, _dirs, files in os.walk(old):
        rel = os.path.relpath(root, old)
        if rel.split(os.sep)[0] in ("tools", "samples", "scripts", "Documentation"):
            continue
        for name in files:
            if not name.endswith(".c"):
                continue
            p = os.path.normpath(os.path.join(rel, name))
            q = os.path.join(new, p)
            if os.path.exists(q) and not filecmp.cmp(os.path.join(old, p), q, shallow=False):
                yield p


def main():
    if len(sys.argv) not in (5, 7):
        sys.exit(__doc__)
    old, new, changelog, old_version = sys.argv[1:5]
    ents = entries(changelog, old_version)
    if len(sys.argv) == 5:
        for p in sorted(changed_c_files(old, new)):
            if p.startswith("arch/") and not p.startswith("arch/x86"):
                continue
            prefix, anywhere = matches(p, ents)
            if len(prefix) == 1 and len(anywhere) <= 2:
                d = delta(old, new, p)
                hunks = d.count("\n@@")
                cve = ",".join(re.findall(r"CVE-\d+-\d+", prefix[0][0])) or "-"
                print(f"{p}\t{hunks} hunks\t{cve}\t{prefix[0][0]}")
        return
    picks, outdir = sys.argv[5:7]
    os.makedirs(outdir, exist_ok=True)
    rows = ["id\tcve\tfile\tstable\tupstream_subject\thunk_context"]
    with open(picks, encoding="utf-8") as f:
        lines = [ln.split() for ln in f if ln.strip() and not ln.startswith("#")]
    for n, (name, path) in enumerate(lines, 1):
        prefix, _ = matches(path, ents)
        if len(prefix) != 1:
            sys.exit(f"{path}: {len(prefix)} changelog entries name it, not one")
        subject, rel = prefix[0]
        cve = ",".join(re.findall(r"CVE-\d+-\d+", subject)) or "-"
        subject = re.sub(r"\s*\((CVE-\d+-\d+,?\s*)+\)", "", subject).strip()
        d = delta(old, new, path)
        fid = f"{n:02d}-{name}"
        with open(os.path.join(outdir, fid + ".diff"), "w", encoding="utf-8") as out:
            out.write(d)
        ctx = []
        for h in re.findall(r"^@@ [^@]+ @@ ?(.*)$", d, re.M):
            m = re.search(r"(\w+)\s*\(", h)
            c = m.group(1) if m else (h.strip() or "?")
            if c not in ctx:
                ctx.append(c)
        rows.append("\t".join([fid, cve, path, rel or "?", subject, ",".join(ctx)]))
    with open(os.path.join(outdir, "manifest.tsv"), "w", encoding="utf-8") as out:
        out.write("\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
