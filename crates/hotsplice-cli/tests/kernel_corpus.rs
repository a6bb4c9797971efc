//! The real stable fixes of the kernel corpus (tests/kernel/corpus,
//! Debian's 6.1.176-1 → 6.1.187-1), every one of them, across net, usb, fs,
//! sound, mm, crypto, block, scsi, media, vmlinux and modules: each built by
//! `hotsplice create --kernel` for the pinned kernel 6.1.176-1 (fetched by
//! scripts/kernel/fetch.sh, which the archive serves), then all the created
//! ones applied together by `hotsplice kernel apply` in that kernel under
//! QEMU, every patched object checked, and all removed. A fix that is not
//! created must have its known outcome (see [`NOT_CREATED`]); any other
//! failure fails the test. User-space reproducers (tests/kernel/repro) show
//! two fixes working: they misbehave before the apply, not after, and again
//! after the removal. The share built without hand-written code is printed;
//! scripts/corpus-kernel.sh builds the same corpus into docs/kernel-corpus.md.
//! Reported as ignored with HOTSPLICE_SKIP_KERNEL_TESTS=1.

mod kernel_common;

use hotsplice_testsupport::harness;
use kernel_common as kc;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The corpus' base, which every fix of it applies to.
const PINNED: &str = kc::PINNED;

/// The fixes `create` does not build, and what it must say instead: the
/// first `hotsplice: error:` line is exactly the message (nothing to
/// patch), or holds every part of it (a refusal). Every other fix of the
/// corpus must be created.
const NOT_CREATED: &[(&str, Outcome)] = &[
    // `= {}` for a stack variable: the same code with
    // CONFIG_INIT_STACK_ALL_ZERO=y, so the running kernel is already fixed.
    (
        "03-net-nexthop",
        Outcome::NothingToPatch("the fix changes no compiled code"),
    ),
    // A change of registered data (the `.checkentry` of two entries of the
    // table), which the old code keeps using: refused, naming the table.
    (
        "49-net-xt_connmark",
        Outcome::Refused(&[
            "changing the initial value, size or layout of existing data `connmark_tg_reg`",
            "(net/netfilter/xt_connmark.c) cannot be done by a live patch",
        ]),
    ),
];

#[derive(Debug)]
enum Outcome {
    NothingToPatch(&'static str),
    Refused(&'static [&'static str]),
}

/// Fixes worth a closer look besides a plain function: a file #included by
/// another (psi.c, compared in build_utility.o), an `__init` function whose
/// only change is a moved `__LINE__` (rbd), a new `WARN_ONCE` flag
/// (kvaser_usb_leaf), and two functions without ftrace's entry call (lib/
/// is compiled without it), redirected directly.
/// The directly redirected functions: (fix, function).
const DIRECT: &[(&str, &str)] = &[
    ("32-lib-rhashtable", "rhashtable_walk_start_check"),
    ("33-lib-assoc_array", "assoc_array_walk"),
];

/// Reproducers: (name in the guest, program from tests/kernel/repro).
const REPROS: &[(&str, &str)] = &[
    ("sctp_auth", "sctp_auth_chunks"),
    ("xt_u32", "xt_u32_shift"),
    ("netlink", "netlink_walk"),
    ("keyring", "keyring_walk"),
];

/// Modules the reproducers need besides the patched ones.
const REPRO_MODULES: &str = "iptable_filter";

struct Created {
    fix: String,
    hsp: PathBuf,
    module: String,
    objects: Vec<String>,
    functions: Vec<String>,
    direct: Vec<String>,
    skipped: Vec<String>,
}

/// A create that did not write a patch.
struct Failed {
    status: Option<i32>,
    /// Its first `hotsplice: error:` line, prefix removed.
    message: Option<String>,
    stderr: String,
}

impl Failed {
    /// Whether this is the fix's known outcome.
    fn is(&self, want: &Outcome) -> bool {
        let Some(m) = self.message.as_deref() else {
            return false;
        };
        self.status == Some(1)
            && match want {
                Outcome::NothingToPatch(text) => m == *text,
                Outcome::Refused(parts) => parts.iter().all(|p| m.contains(p)),
            }
    }
}

/// Every fix of the corpus (`NN-name.diff`), in order.
fn all_fixes() -> Vec<String> {
    let dir = kc::repo_root().join("tests/kernel/corpus");
    let mut fixes: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            e.expect("corpus entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter_map(|n| n.strip_suffix(".diff").map(str::to_string))
        .collect();
    fixes.sort();
    fixes
}

fn create(fix: &str, key: &Path, out: &Path) -> Result<Created, Failed> {
    let started = std::time::Instant::now();
    let o = kc::create_kernel_command(&corpus(fix), out)
        .arg("--sign")
        .arg(key)
        .output()
        .expect("hotsplice create --kernel");
    eprintln!(
        "kernel corpus: create --kernel {fix} took {:.1}s",
        started.elapsed().as_secs_f64()
    );
    if !o.status.success() {
        let stderr = String::from_utf8_lossy(&o.stderr).trim().to_string();
        let message = stderr
            .lines()
            .find_map(|l| l.strip_prefix("hotsplice: error: "))
            .map(|m| m.trim_end_matches("; last lines:").to_string());
        return Err(Failed {
            status: o.status.code(),
            message,
            stderr,
        });
    }
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("create --json");
    let list = |key: &str| -> Vec<String> {
        v[key]
            .as_array()
            .unwrap_or_else(|| panic!("{key} in create's output: {v}"))
            .iter()
            .map(|x| x.as_str().unwrap_or_default().to_string())
            .collect()
    };
    Ok(Created {
        fix: fix.to_string(),
        hsp: PathBuf::from(v["path"].as_str().expect("path")),
        module: v["module"].as_str().expect("module").to_string(),
        objects: list("objects"),
        functions: list("functions"),
        direct: list("direct"),
        skipped: list("skipped"),
    })
}

fn corpus(fix: &str) -> PathBuf {
    kc::repo_root()
        .join("tests/kernel/corpus")
        .join(format!("{fix}.diff"))
}

/// A reproducer, compiled static for the guest (which has no libc).
fn build_repro(prog: &str, out: &Path) {
    kc::run(
        Command::new("gcc")
            .args(["-static", "-O2", "-Wall", "-Werror", "-o"])
            .arg(out)
            .arg(
                kc::repo_root()
                    .join("tests/kernel/repro")
                    .join(format!("{prog}.c")),
            ),
        "gcc -static (reproducer)",
    );
}

fn kernel_corpus_created_applied_and_removed_in_qemu() {
    let k = kc::kernel();
    assert!(
        k.cache.ends_with("kernel-6.1.176"),
        "the corpus needs the pinned kernel, not {}",
        k.cache.display()
    );
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("kernel-corpus");
    let _ = std::fs::remove_dir_all(&dir);
    let (patches, keys, repro) = (dir.join("patches"), dir.join("keys"), dir.join("repro"));
    for d in [&patches, &keys, &repro] {
        std::fs::create_dir_all(d).expect("mkdir");
    }
    let (key, public) = kc::keygen(&keys, "corpustest");

    // The guest's static hotsplice builds meanwhile (cargo, minutes from
    // scratch): the creates are mostly one compile at a time.
    let static_bin = std::thread::spawn(|| kc::static_hotsplice().clone());

    let fixes = all_fixes();
    assert!(fixes.len() >= 50, "the corpus has {} fixes", fixes.len());
    let manifest =
        std::fs::read_to_string(kc::repo_root().join("tests/kernel/corpus/manifest.tsv"))
            .expect("tests/kernel/corpus/manifest.tsv");
    for f in &fixes {
        assert!(
            manifest.lines().any(|l| l.split('\t').next() == Some(f)),
            "{f} is not in tests/kernel/corpus/manifest.tsv"
        );
    }
    for (f, _) in NOT_CREATED {
        assert!(fixes.iter().any(|x| x == f), "{f} is not in the corpus");
    }
    let mut created = Vec::new();
    let mut unexpected = Vec::new();
    let mut nothing = 0;
    let started = std::time::Instant::now();
    for fix in &fixes {
        let known = NOT_CREATED.iter().find(|(f, _)| f == fix).map(|(_, o)| o);
        match (create(fix, &key, &dir.join(fix)), known) {
            (Ok(c), None) => {
                println!(
                    "{fix}: created: {} in {}",
                    c.functions.join(", "),
                    c.objects.join(", ")
                );
                std::fs::copy(&c.hsp, patches.join(c.hsp.file_name().unwrap())).expect("copy");
                created.push(c);
            }
            (Ok(c), Some(want)) => unexpected.push(format!(
                "{fix}: created ({} in {}), but expected {want:?}",
                c.functions.join(", "),
                c.objects.join(", ")
            )),
            (Err(e), Some(want)) if e.is(want) => {
                let m = e.message.unwrap_or_default();
                match want {
                    Outcome::NothingToPatch(_) => {
                        nothing += 1;
                        println!("{fix}: nothing to patch: {m}");
                    }
                    Outcome::Refused(_) => println!("{fix}: refused: {m}"),
                }
            }
            (Err(e), want) => unexpected.push(format!(
                "{fix}: failed (exit {:?}{}):\n{}",
                e.status,
                want.map(|w| format!(", expected {w:?}"))
                    .unwrap_or_default(),
                e.stderr
            )),
        }
    }
    let need = fixes.len() - nothing;
    println!(
        "kernel corpus on {PINNED}: created {} of {need} fixes that change code ({:.0} %) with no \
         hand-written code; {nothing} of {} change no compiled code; {} refused (creates {:.0} s)",
        created.len(),
        100.0 * created.len() as f64 / need as f64,
        fixes.len(),
        need - created.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        unexpected.is_empty(),
        "not the known outcome:\n{}",
        unexpected.join("\n")
    );
    let by_fix = |f: &str| created.iter().find(|c| c.fix == f).unwrap();
    // The included file's function has its own name, in vmlinux.
    assert_eq!(by_fix("34-kernel-psi").functions, ["psi_cgroup_free"]);
    assert_eq!(by_fix("34-kernel-psi").objects, ["vmlinux"]);
    // rbd: its `__init` rbd_slab_init, whose only change is a moved
    // `__LINE__`, is neither refused nor carried; the fixed function is
    // replaced (and the functions elsewhere whose `__LINE__` moved are
    // replaced by their equivalents, never skipped).
    let rbd = &by_fix("25-block-rbd").functions;
    assert!(
        rbd.iter().any(|f| f == "rbd_object_map_callback"),
        "{rbd:?}"
    );
    assert!(!rbd.iter().any(|f| f == "rbd_slab_init"), "{rbd:?}");
    // ... and create names what it left alone: rbd_init, into which the
    // compiler inlined rbd_slab_init (its alias init_module not repeated).
    assert_eq!(by_fix("25-block-rbd").skipped, ["rbd_init"]);
    // lib/: no ftrace entry, so redirected directly; nothing else is.
    for c in &created {
        let want: Vec<&str> = DIRECT
            .iter()
            .filter(|(f, _)| *f == c.fix)
            .map(|(_, n)| *n)
            .collect();
        assert_eq!(c.direct, want, "{}: direct functions", c.fix);
    }

    for (_, prog) in REPROS {
        build_repro(prog, &repro.join(prog));
    }
    let g = |c: &Created| format!("/patches/{}", c.hsp.file_name().unwrap().to_string_lossy());
    let files: Vec<String> = created.iter().map(g).collect();
    let mods: Vec<String> = created.iter().map(|c| c.module.clone()).collect();
    let mut objects: Vec<String> = created
        .iter()
        .flat_map(|c| c.objects.iter().filter(|o| *o != "vmlinux").cloned())
        .collect();
    objects.sort();
    objects.dedup();
    let repros: Vec<String> = REPROS.iter().map(|(n, p)| format!("{n}={p}")).collect();
    let env_file = dir.join("hs-test.env");
    std::fs::write(
        &env_file,
        format!(
            "export HOTSPLICE_STATE_DIR=/tmp/hotsplice-state\n\
             export HOTSPLICE_CONFIG_DIR=/etc/hotsplice\n\
             CORPUS_FILES='{}'\nCORPUS_MODS='{}'\nREPROS='{}'\n",
            files.join(" "),
            mods.join(" "),
            repros.join(" ")
        ),
    )
    .unwrap();
    let bin = static_bin.join().expect("the static hotsplice build");
    let initrd = dir.join("initrd.zst");
    kc::make_initrd_with(
        &initrd,
        &format!(
            "virtio_pci virtio_blk ext4 {REPRO_MODULES} {}",
            objects.join(" ")
        ),
        &[
            (patches.as_path(), "/patches"),
            (repro.as_path(), "/repro"),
            (public.as_path(), "/etc/hotsplice/keys/corpustest.pub"),
            (env_file.as_path(), "/etc/hs-test.env"),
            (bin.as_path(), "/usr/sbin/hotsplice"),
        ],
    );
    let b = kc::boot(
        &initrd,
        None,
        "hstest=corpus-apply hsdisk=none",
        &dir.join("serial.log"),
    );
    assert!(
        b.log.contains("Brought up 1 node, 2 CPUs"),
        "the guest should run 2 CPUs:\n{}",
        b.log
    );
    assert_eq!(b.status("corpus-apply"), 0, "{}", b.output("corpus-apply"));
    let mut applied = 0;
    for c in &created {
        for o in &c.objects {
            assert_eq!(
                b.get(&format!("corpus-patched {} {o}", c.module)),
                Some("1"),
                "{}: object {o} not patched:\n{}",
                c.fix,
                b.log
            );
        }
        assert_eq!(b.value(&format!("corpus-transition {}", c.module)), "0");
        applied += 1;
    }
    println!(
        "kernel corpus in QEMU ({}): {applied} of {} applied together by `hotsplice kernel apply`, all objects patched, removed",
        b.value("init-start uname-r"),
        created.len()
    );
    assert_eq!(
        b.status("corpus-remove"),
        0,
        "{}",
        b.output("corpus-remove")
    );
    assert_eq!(b.value("corpus-klp-after"), "");
    assert_eq!(b.value("corpus-lsmod-after"), "");

    // sctp: an endpoint's list of chunk types to authenticate holds 4
    // fewer entries once fixed (SCTP_NUM_NOAUTH_CHUNKS), and as many as
    // before once the patch is removed.
    let accepted = |stage: &str| -> u32 {
        let key = format!("repro sctp_auth {stage}");
        assert_eq!(b.status(&key), 0, "{}", b.output(&key));
        b.output(&key)
            .strip_prefix("accepted ")
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("{key}: {}", b.output(&key)))
    };
    let (unfixed, fixed, removed) = (accepted("before"), accepted("applied"), accepted("removed"));
    println!(
        "reproducer sctp_auth (05-net-sctp_auth): SCTP_AUTH_CHUNK accepted {unfixed} chunk types before, {fixed} patched, {removed} after removal"
    );
    assert_eq!(fixed + 4, unfixed, "the fix's limit is 4 lower");
    assert_eq!(removed, unfixed, "removed: the unfixed behaviour again");
    // xt_u32: a rule shifting by 40 bits is installed unfixed, refused fixed.
    let rule = |stage: &str| -> String {
        let key = format!("repro xt_u32 {stage}");
        assert_eq!(b.status(&key), 0, "{}", b.output(&key));
        b.output(&key)
    };
    let (unfixed, fixed, removed) = (rule("before"), rule("applied"), rule("removed"));
    println!(
        "reproducer xt_u32 (11-net-xt_u32): a u32 rule shifting by 40: {unfixed} before, {fixed} patched, {removed} after removal"
    );
    assert_eq!(
        (unfixed.as_str(), fixed.as_str(), removed.as_str()),
        ("accepted", "refused (EINVAL)", "accepted")
    );
    // The exercisers of the directly redirected functions behave the same
    // unpatched, patched and after removal.
    for (name, want) in [
        ("netlink", "sockets >=64"),
        ("keyring", "keys 500 found 500 missing-not-found"),
    ] {
        for stage in ["before", "applied", "removed"] {
            let key = format!("repro {name} {stage}");
            assert_eq!(b.status(&key), 0, "{}", b.output(&key));
            assert_eq!(b.output(&key), want, "{key}");
        }
    }
    // Each direct function: the module's callback wrote a jump over the
    // bytes the unfixed build has at its entry, to its new copy in the
    // patch module, and the removal put those bytes back (read back by the
    // module after the restore).
    for (fix, f) in DIRECT {
        let module = &by_fix(fix).module;
        let redirected = format!("hotsplice: {f} redirected to __hs_new_0_{f} [{module}] (was ");
        let line = b
            .log
            .lines()
            .find_map(|l| l.split_once(&redirected).map(|(_, r)| r.to_string()))
            .unwrap_or_else(|| panic!("no `{redirected}` in the guest's log:\n{}", b.log));
        let (was, now) = line
            .trim_end()
            .strip_suffix(')')
            .and_then(|r| r.split_once(", now "))
            .unwrap_or_else(|| panic!("{line}"));
        assert!(now.starts_with("e9 "), "{f}: not a jmp rel32: {now}");
        assert_ne!(was, now);
        let restored = format!("hotsplice: {f} restored ({was})");
        assert!(
            b.log.contains(&restored),
            "no `{restored}` in the guest's log:\n{}",
            b.log
        );
        println!("{fix}: {f} redirected directly ({was} → {now}) and restored");
    }
    // One warning is the guest's own and comes before anything is patched:
    // bluetooth (35-bt-eir) needs ecdh_generic, whose crypto self-test
    // fails under QEMU's TCG (`alg: self-tests for ecdh-nist-p256 …
    // failed (rc=-14)`, a WARNING in crypto/testmgr.c) when init loads it.
    // Any other, or any after the first patch is enabled, fails the test.
    let first_patch = b
        .log
        .find("livepatch: enabling patch")
        .expect("no livepatch was enabled");
    let (boot_log, patched_log) = b.log.split_at(first_patch);
    for bad in [
        "BUG:",
        "Oops",
        "WARNING:",
        "general protection",
        "stays redirected",
    ] {
        assert!(
            !patched_log.contains(bad),
            "{bad} in the guest's log once patching began:\n{}",
            b.log
        );
        for l in boot_log.lines().filter(|l| l.contains(bad)) {
            assert!(
                l.contains("WARNING: CPU:")
                    && l.contains(" at crypto/testmgr.c:")
                    && boot_log.contains(
                        "alg: self-tests for ecdh-nist-p256 using ecdh-nist-p256-generic failed"
                    ),
                "{bad} in the guest's log before patching: {l}\n{}",
                b.log
            );
        }
    }
    assert!(b.has_line("scenario-exit corpus-apply=0"));
}

fn main() {
    // Every kernel script this binary runs (fetch, probe, mkinitrd, boot)
    // uses the pinned build, as does kc::kernel().
    std::env::set_var("HOTSPLICE_KERNEL_VERSION", PINNED);
    // Two vCPUs: the direct redirections' stop runs on more than one CPU.
    std::env::set_var("HOTSPLICE_GUEST_CPUS", "2");
    // Every fix is applied and removed in one boot: two livepatch
    // transitions each, about 1–2 s apiece under TCG.
    if std::env::var_os("HOTSPLICE_BOOT_TIMEOUT").is_none() {
        std::env::set_var("HOTSPLICE_BOOT_TIMEOUT", "900");
    }
    harness::main(
        kc::skip_reason(),
        hotsplice_testsupport::tests![kernel_corpus_created_applied_and_removed_in_qemu],
    );
}
