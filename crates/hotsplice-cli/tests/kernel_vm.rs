//! Kernel tests in a real Debian 12 kernel booted under QEMU (TCG):
//! a hand-written livepatch module (tests/kernel/sample-livepatch), built
//! against the kernel's own headers, changes /proc/version while loaded and
//! the change goes away when it is disabled and unloaded; and a state disk
//! keeps a file across boots.
//!
//! Needs network access to the Debian archive on the first run (fetch.sh
//! caches ~230 MB under .cache/kernel). Skipped only when
//! HOTSPLICE_SKIP_KERNEL_TESTS=1, and then reported as ignored (this file
//! has a harness of its own for that: `harness = false`).

mod kernel_common;

use hotsplice_testsupport::harness;
use kernel_common as kc;

const MARKER: &str = "[hotsplice-sample-livepatch]";

fn livepatch_module_changes_kernel_behaviour_in_qemu() {
    let k = kc::kernel();
    let tmp = tempfile::tempdir().expect("tempdir");
    let kos = kc::build_module(
        &kc::repo_root().join("tests/kernel/sample-livepatch"),
        &tmp.path().join("build"),
    );
    let ko = kos
        .iter()
        .find(|p| p.ends_with("hs_sample_livepatch.ko"))
        .expect("hs_sample_livepatch.ko built");
    let initrd = tmp.path().join("initrd.zst");
    kc::make_initrd(&initrd, &[(ko, "/lib/hotsplice/hs_sample_livepatch.ko")]);
    let b = kc::boot(
        &initrd,
        None,
        "hstest=livepatch-sample",
        &tmp.path().join("serial.log"),
    );

    // the booted kernel is the one we built against
    assert_eq!(b.value("uname-r"), k.kver, "guest kernel release");
    // version_proc_show is patchable: it has an ftrace call site, and kallsyms knows it
    assert_eq!(b.value("ftrace-traceable version_proc_show"), "yes");
    assert!(
        b.value("kallsyms version_proc_show")
            .ends_with(" t version_proc_show"),
        "static symbol in /proc/kallsyms: {}",
        b.value("kallsyms version_proc_show")
    );

    let before = b.value("value-before");
    assert!(
        before.starts_with(&format!("Linux version {} ", k.kver)),
        "unexpected /proc/version: {before}"
    );
    assert!(!before.contains(MARKER), "marker before insmod: {before}");
    assert_eq!(b.value("insmod"), "ok", "insmod:\n{}", b.log);
    assert_eq!(b.value("transition-after-enable"), "0");
    assert_eq!(b.value("enabled"), "1");
    let patched = b.value("value-patched");
    assert!(
        patched.contains(MARKER),
        "/proc/version not patched: {patched}\n{}",
        b.log
    );
    // the kernel noticed: TAINT_LIVEPATCH (bit 15) is set
    let taint: u64 = b.value("tainted-patched").parse().expect("taint number");
    assert_ne!(taint & (1 << 15), 0, "TAINT_LIVEPATCH not set: {taint}");
    assert!(b
        .log
        .contains("livepatch: 'hs_sample_livepatch': patching complete"));

    // disabled: transition over (the patch's sysfs directory may already be gone)
    let t = b.value("transition-after-disable");
    assert!(t == "0" || t == "gone", "transition after disable: {t}");
    assert!(b
        .log
        .contains("livepatch: 'hs_sample_livepatch': unpatching complete"));
    assert_eq!(b.value("rmmod"), "ok");
    assert_eq!(b.value("value-after"), before, "/proc/version restored");
    assert_eq!(b.value("lsmod-after"), "0");
    assert!(b.has_line("scenario-exit livepatch-sample=0"));
    assert!(b.has_line("init-done"));
}

fn guest_state_disk_survives_reboot_in_qemu() {
    let k = kc::kernel();
    let tmp = tempfile::tempdir().expect("tempdir");
    let initrd = tmp.path().join("initrd.zst");
    kc::make_initrd(&initrd, &[]);
    let disk = tmp.path().join("state.img");
    kc::make_disk(&disk);
    let token = format!(
        "tok{}x{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
    );

    let b1 = kc::boot(
        &initrd,
        Some(&disk),
        &format!("hstest=persist-write hstoken={token}"),
        &tmp.path().join("serial1.log"),
    );
    assert_eq!(b1.value("init-start uname-r"), k.kver);
    assert!(b1.has_line("disk-mounted dev=/dev/vda"), "{}", b1.log);
    assert_eq!(b1.value("persist-write"), token);

    let b2 = kc::boot(
        &initrd,
        Some(&disk),
        "hstest=persist-read",
        &tmp.path().join("serial2.log"),
    );
    assert!(b2.has_line("disk-mounted dev=/dev/vda"), "{}", b2.log);
    assert_eq!(b2.value("persist-read"), token, "token survived the reboot");
    assert!(b2.has_line("init-done"));
}

// ---------------------------------------------------------------------------
// The hotsplice kernel client (`hotsplice kernel ...`, `uptrack-*`) in the
// guest, on livepatch modules wrapped into signed patch files.
//
// The modules come from tests/kernel/livepatches/* (hand-written, built for
// the probed kernel by scripts/kernel/build-livepatch.sh) unless
// HOTSPLICE_KERNEL_TEST_KO_<NAME> names another .ko (e.g. one made by
// `hotsplice create --kernel`) for NAME in VERSION1, VERSION2, COMBO, PIPE;
// HOTSPLICE_KERNEL_TEST_MARKER_<NAME> then says what it puts in
// /proc/version (COMBO_MOUNTS: in the ext4 line of /proc/mounts).
//
// Three boots of one VM with its state disk are shared by the tests below:
//   main:      hs-basic, hs-stack, hs-combo, hs-refuse, hs-stuck,
//              hs-fleet-report (written by setup_client_vm), then
//              hs-persist-apply (leaves two patches applied, state on /mnt)
//   reboot:    hs-boot-hook (`hotsplice kernel boot` first after the mount)
//   nouptrack: hs-boot-hook again with `nouptrack` on the command line
// Everything (patches, logs) stays in target/tmp/kernel-client for a look
// after a failure.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// One test patch: its module, what its modinfo says, its signed patch file.
struct Lp {
    ko: PathBuf,
    info: hotsplice_kernel::ModInfo,
    hsp: PathBuf,
    marker: String,
}

struct ClientVm {
    dir: PathBuf,
    disk: PathBuf,
    initrd: PathBuf,
    build_id: String,
    lp1: Lp,
    lp2: Lp,
    combo: Lp,
    pipe: Lp,
    combo_mounts_marker: String,
    wrong_build_id: String,
    main: kc::Boot,
}

struct Reboots {
    reboot: kc::Boot,
    nouptrack: kc::Boot,
}

fn env_or(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_string())
}

/// The module for test patch NAME: made by `hotsplice create --kernel` from
/// `tests/kernel/fixes/<fix>` against the probed kernel (the default), or a
/// hand-written one from tests/kernel/livepatches/<dir> when
/// HOTSPLICE_KERNEL_TEST_HANDWRITTEN=1, or the .ko HOTSPLICE_KERNEL_TEST_KO_<NAME>
/// names.
fn lp_module(name: &str, dir: &str, fix: &str, build: &Path) -> PathBuf {
    if let Some(p) = std::env::var_os(format!("HOTSPLICE_KERNEL_TEST_KO_{name}")) {
        return PathBuf::from(p);
    }
    if std::env::var("HOTSPLICE_KERNEL_TEST_HANDWRITTEN").as_deref() == Ok("1") {
        return kc::build_livepatch(
            &kc::repo_root().join("tests/kernel/livepatches").join(dir),
            &build.join(dir),
        );
    }
    generated_module(fix, &build.join(format!("gen-{dir}")))
}

/// `hotsplice create --kernel` of a fix for the probed guest kernel.
fn generated_module(fix: &str, out: &Path) -> PathBuf {
    let _ = std::fs::remove_dir_all(out);
    let started = std::time::Instant::now();
    let o = kc::create_kernel_command(&kc::repo_root().join("tests/kernel/fixes").join(fix), out)
        .output()
        .expect("hotsplice create --kernel");
    assert!(
        o.status.success(),
        "create --kernel {fix}: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    eprintln!(
        "kernel test: create --kernel {fix} took {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let text = String::from_utf8_lossy(&o.stdout);
    let ko = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("\"module_path\": \""))
        .map(|l| l.trim_end_matches("\",").to_string())
        .expect("module_path in create's output");
    PathBuf::from(ko)
}

fn handwritten() -> bool {
    std::env::var("HOTSPLICE_KERNEL_TEST_HANDWRITTEN").as_deref() == Ok("1")
}

fn marker(name: &str, generated: &str, handwritten_marker: &str) -> String {
    env_or(
        &format!("HOTSPLICE_KERNEL_TEST_MARKER_{name}"),
        if handwritten() {
            handwritten_marker
        } else {
            generated
        },
    )
}

fn make_lp(ko: PathBuf, patches: &Path, key: &Path, marker: String) -> Lp {
    let bytes = std::fs::read(&ko).expect("read module");
    let info = hotsplice_kernel::modinfo(&bytes)
        .unwrap_or_else(|e| panic!("{}: not a hotsplice livepatch: {e}", ko.display()));
    let hsp = kc::wrap(&ko, patches, key);
    Lp {
        ko,
        info,
        hsp,
        marker,
    }
}

/// The build-id `id` with every hex digit moved by one: another kernel's.
fn other_build_id(id: &str) -> String {
    id.chars()
        .map(|c| {
            let v = c.to_digit(16).expect("hex build-id");
            std::char::from_digit((v + 1) % 16, 16).unwrap()
        })
        .collect()
}

fn replace_once(hay: &mut [u8], needle: &[u8], with: &[u8]) {
    assert_eq!(needle.len(), with.len());
    let at = hay
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("needle in module");
    hay[at..at + with.len()].copy_from_slice(with);
}

fn setup_client_vm() -> ClientVm {
    let k = kc::kernel();
    let probe = kc::probe();
    assert_eq!(probe.release, k.kver, "probed release");
    let guest_hotsplice = kc::static_hotsplice();

    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("kernel-client");
    // everything but the module builds (kbuild rebuilds only what changed)
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries.flatten() {
            if e.file_name() != "build" {
                let p = e.path();
                let _ = std::fs::remove_dir_all(&p).or_else(|_| std::fs::remove_file(&p));
            }
        }
    }
    let (patches, build, keys, bin, feed) = (
        dir.join("patches"),
        dir.join("build"),
        dir.join("keys"),
        dir.join("bin"),
        dir.join("feed"),
    );
    for d in [&patches, &build, &keys, &bin, &feed, &patches.join("wrong")] {
        std::fs::create_dir_all(d).expect("mkdir");
    }
    let (key, public) = kc::keygen(&keys, "kerneltest");

    let lp1 = make_lp(
        lp_module("VERSION1", "version1", "version.diff", &build),
        &patches,
        &key,
        marker("VERSION1", "[hotsplice-gen1]", "[hotsplice-lp1]"),
    );
    let lp2 = make_lp(
        lp_module("VERSION2", "version2", "version2.diff", &build),
        &patches,
        &key,
        marker("VERSION2", "[hotsplice-gen2]", "[hotsplice-lp2]"),
    );
    let combo = make_lp(
        lp_module("COMBO", "ext4-combo", "ext4_version.diff", &build),
        &patches,
        &key,
        marker("COMBO", "[hotsplice-gen3]", "[hotsplice-combo]"),
    );
    let pipe = make_lp(
        lp_module("PIPE", "pipe-read", "pipe.diff", &build),
        &patches,
        &key,
        String::new(),
    );
    for lp in [&lp1, &lp2, &combo, &pipe] {
        assert_eq!(
            lp.info.build_id,
            probe.build_id,
            "{}: hotsplice_build_id is not the probed kernel's",
            lp.ko.display()
        );
    }

    // Patch 1's module, claiming another kernel build (same length string).
    let wrong_build_id = other_build_id(&probe.build_id);
    let mut ko = std::fs::read(&lp1.ko).unwrap();
    replace_once(
        &mut ko,
        format!("hotsplice_build_id={}", probe.build_id).as_bytes(),
        format!("hotsplice_build_id={wrong_build_id}").as_bytes(),
    );
    let wrong_ko = build.join("wrong-build.ko");
    std::fs::write(&wrong_ko, &ko).unwrap();
    let wrong = kc::wrap(&wrong_ko, &patches.join("wrong"), &key);
    // Patch 1's file with one byte flipped in the middle (inside the module).
    let mut bytes = std::fs::read(&lp1.hsp).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    let corrupt = patches.join("corrupt.hsp");
    std::fs::write(&corrupt, &bytes).unwrap();
    // a feed holding the two stackable patches (for show --available)
    for lp in [&lp1, &lp2] {
        std::fs::copy(&lp.hsp, feed.join(lp.hsp.file_name().unwrap())).unwrap();
    }

    // hotsplice and its uptrack-* names
    std::fs::copy(guest_hotsplice, bin.join("hotsplice")).unwrap();
    for n in ["install", "remove", "show", "upgrade", "uname"] {
        std::os::unix::fs::symlink("hotsplice", bin.join(format!("uptrack-{n}"))).unwrap();
    }

    let g = |p: &Path| format!("/patches/{}", p.strip_prefix(&patches).unwrap().display());
    let env = format!(
        "export HOTSPLICE_STATE_DIR=/mnt/hotsplice-state\n\
         export HOTSPLICE_CONFIG_DIR=/etc/hotsplice\n\
         LP1={} LP1_ID={} LP1_MOD={}\n\
         LP2={} LP2_ID={} LP2_MOD={}\n\
         COMBO={} COMBO_ID={} COMBO_MOD={}\n\
         PIPE={} PIPE_ID={} PIPE_MOD={}\n\
         WRONG={} CORRUPT={}\n",
        g(&lp1.hsp),
        lp1.info.id,
        lp1.info.module,
        g(&lp2.hsp),
        lp2.info.id,
        lp2.info.module,
        g(&combo.hsp),
        combo.info.id,
        combo.info.module,
        g(&pipe.hsp),
        pipe.info.id,
        pipe.info.module,
        g(&wrong),
        g(&corrupt),
    );
    let env_file = dir.join("hs-test.env");
    std::fs::write(&env_file, env).unwrap();

    // The fleet report of a machine without network, made after a kernel
    // patch (imported by a host server in kernel_client_fleet_report_in_qemu).
    let fleet_scenario = dir.join("hs-fleet-report.sh");
    std::fs::write(
        &fleet_scenario,
        "#!/bin/sh\n\
         # Scenario (written by kernel_vm.rs): `hotsplice sync --report-to` with a\n\
         # kernel patch applied, the report printed on one line.\n\
         . /tests/hslib.sh\n\
         hsrun fleet-apply hotsplice kernel apply \"$LP1\"\n\
         hsrun fleet-report hotsplice sync --report-to /tmp/fleet-report.json\n\
         hs \"fleet-report-json=$(tr -d '\\n' < /tmp/fleet-report.json)\"\n\
         hsrun fleet-undo hotsplice kernel undo \"$LP1_ID\"\n",
    )
    .unwrap();
    let mut extra: Vec<(PathBuf, String)> = vec![
        (fleet_scenario, "/tests/hs-fleet-report.sh".into()),
        (patches.clone(), "/patches".into()),
        (feed.clone(), "/feed".into()),
        (public.clone(), "/etc/hotsplice/keys/kerneltest.pub".into()),
        (env_file, "/etc/hs-test.env".into()),
    ];
    for e in std::fs::read_dir(&bin).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        extra.push((e.path(), format!("/usr/sbin/{name}")));
    }
    let extra_refs: Vec<(&Path, &str)> = extra
        .iter()
        .map(|(p, d)| (p.as_path(), d.as_str()))
        .collect();
    let initrd = dir.join("initrd.zst");
    kc::make_initrd(&initrd, &extra_refs);
    let disk = dir.join("state.img");
    kc::make_disk(&disk);

    let main = kc::boot(
        &initrd,
        Some(&disk),
        "hstest=hs-basic,hs-stack,hs-combo,hs-refuse,hs-stuck,hs-fleet-report,hs-persist-apply",
        &dir.join("serial-main.log"),
    );
    ClientVm {
        dir,
        disk,
        initrd,
        build_id: probe.build_id.clone(),
        lp1,
        lp2,
        combo,
        pipe,
        combo_mounts_marker: marker("COMBO_MOUNTS", ",hotsplice", "hotsplice_combo"),
        wrong_build_id,
        main,
    }
}

/// Run `f` once for the whole test binary; a panic is kept as a message so
/// every test depending on it fails with it instead of running it again.
fn shared<T>(cell: &'static OnceLock<Result<T, String>>, f: fn() -> T) -> &'static T {
    let r = cell.get_or_init(|| {
        std::panic::catch_unwind(f).map_err(|e| {
            e.downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".into())
        })
    });
    match r {
        Ok(v) => v,
        Err(e) => panic!("shared kernel-client VM setup failed:\n{e}"),
    }
}

fn client_vm() -> &'static ClientVm {
    static VM: OnceLock<Result<ClientVm, String>> = OnceLock::new();
    shared(&VM, setup_client_vm)
}

fn reboots() -> &'static Reboots {
    static R: OnceLock<Result<Reboots, String>> = OnceLock::new();
    shared(&R, || {
        let vm = client_vm();
        let reboot = kc::boot(
            &vm.initrd,
            Some(&vm.disk),
            "hstest=hs-boot-hook",
            &vm.dir.join("serial-reboot.log"),
        );
        let nouptrack = kc::boot(
            &vm.initrd,
            Some(&vm.disk),
            "hstest=hs-boot-hook nouptrack",
            &vm.dir.join("serial-nouptrack.log"),
        );
        Reboots { reboot, nouptrack }
    })
}

/// Print the transition times hotsplice reported in these command outputs.
fn print_timings(b: &kc::Boot, keys: &[&str]) {
    for key in keys {
        for line in b.values(&format!("{key}-out")) {
            if let Some((t, all)) = kc::transition_times(line) {
                let what = line.split(':').next().unwrap_or(line);
                eprintln!("kernel timing [{key}] {what}: transition {t:.1} ms, total {all:.1} ms");
            }
        }
    }
}

fn booted_version(b: &kc::Boot) -> &str {
    b.value("basic-version-before")
}

fn kernel_client_apply_uname_show_undo_in_qemu() {
    let vm = client_vm();
    let b = &vm.main;
    let kver = &kc::kernel().kver;
    let lp = &vm.lp1;
    let before = booted_version(b);
    assert!(
        before.starts_with(&format!("Linux version {kver} ")),
        "{before}"
    );
    assert!(!before.contains(&lp.marker));
    assert_eq!(b.value("basic-kuname-before"), kver);
    // the feed lists both stackable patches before anything is applied
    let avail = b.output("basic-available");
    assert!(
        avail.contains(&format!("[{}]", vm.lp1.info.id))
            && avail.contains(&format!("[{}]", vm.lp2.info.id)),
        "show --available:\n{avail}"
    );

    assert_eq!(
        b.status("basic-apply"),
        0,
        "apply:\n{}",
        b.output("basic-apply")
    );
    let applied = b.output("basic-apply");
    assert!(
        applied.starts_with(&format!(
            "applied {} ({}): transition ",
            lp.info.id, lp.info.module
        )) && applied.ends_with(&format!("effective kernel {}", lp.info.effective)),
        "{applied}"
    );
    let patched = b.value("basic-version-patched");
    assert!(
        patched.contains(&lp.marker),
        "/proc/version not patched: {patched}"
    );
    // uname(2) is untouched; hotsplice reports the effective release
    assert_eq!(b.value("basic-uname-r-patched"), kver);
    assert_eq!(b.value("basic-kuname-patched"), lp.info.effective);
    let a = b.value("basic-kuname-a-patched");
    assert!(
        a.contains(&lp.info.effective) && a.contains("(hotsplice: 1 update(s))"),
        "{a}"
    );
    let show = b.output("basic-show");
    assert!(
        show.contains(&format!("[{}] {}", lp.info.id, lp.info.description))
            && show.contains(&format!(
                "Effective kernel version is {}",
                lp.info.effective
            )),
        "show:\n{show}"
    );
    assert_eq!(b.value("basic-count-patched"), "1");
    assert_eq!(b.value("basic-lsmod-patched"), lp.info.module);
    assert_eq!(b.value("basic-klp-patched"), lp.info.module);

    assert_eq!(
        b.status("basic-undo"),
        0,
        "undo:\n{}",
        b.output("basic-undo")
    );
    let removed = b.output("basic-undo");
    assert!(
        removed.starts_with(&format!("removed {} ({})", lp.info.id, lp.info.module))
            && removed.ends_with(&format!("effective kernel {kver}")),
        "{removed}"
    );
    assert_eq!(
        b.value("basic-version-after"),
        before,
        "/proc/version restored"
    );
    assert_eq!(b.value("basic-kuname-after"), kver);
    assert_eq!(b.value("basic-count-after"), "0");
    assert_eq!(b.value("basic-lsmod-after"), "");
    assert_eq!(b.value("basic-klp-after"), "");
    assert!(b.has_line("scenario-exit hs-basic=0"));
    print_timings(b, &["basic-apply", "basic-undo"]);
}

fn kernel_client_uptrack_commands_in_qemu() {
    let vm = client_vm();
    let b = &vm.main;
    let kver = &kc::kernel().kver;
    let (lp1, lp2) = (&vm.lp1, &vm.lp2);
    // uptrack-uname -r: the effective release while patched, the booted one after
    assert_eq!(b.value("basic-uptrack-uname-patched"), lp1.info.effective);
    assert_eq!(b.value("basic-uptrack-uname-after"), kver);
    // uptrack-show lists the applied patches
    assert_eq!(
        b.status("basic-uptrack-show"),
        0,
        "{}",
        b.output("basic-uptrack-show")
    );
    let show = b.output("basic-uptrack-show");
    assert!(
        show.contains(&format!("[{}]", lp1.info.id))
            && show.contains(&format!(
                "Effective kernel version is {}",
                lp1.info.effective
            )),
        "uptrack-show:\n{show}"
    );
    let show2 = b.output("stack-show-both");
    assert!(
        show2.contains(&format!("[{}]", lp1.info.id))
            && show2.contains(&format!("[{}]", lp2.info.id)),
        "uptrack-show with two:\n{show2}"
    );
    // uptrack-install A B, uptrack-remove --all
    assert_eq!(
        b.status("stack-install-two"),
        0,
        "{}",
        b.output("stack-install-two")
    );
    assert!(b.value("stack-version-install-two").contains(&lp2.marker));
    assert_eq!(
        b.status("stack-uptrack-remove-all"),
        0,
        "{}",
        b.output("stack-uptrack-remove-all")
    );
    assert_eq!(
        b.value("stack-version-uptrack-remove-all"),
        booted_version(b),
        "uptrack-remove --all restored /proc/version"
    );
    assert_eq!(b.value("stack-lsmod-uptrack-remove-all"), "");
    assert_eq!(b.value("stack-uptrack-count-end"), "0");
    // after the reboot: uptrack-uname before and after the boot hook
    let r = reboots();
    assert_eq!(r.reboot.value("hook-uptrack-uname-before"), kver);
    assert_eq!(
        r.reboot.value("hook-uptrack-uname-after"),
        lp2.info.effective
    );
    assert_eq!(r.reboot.status("hook-uptrack-show"), 0);
    assert_eq!(r.nouptrack.value("hook-uptrack-uname-after"), kver);
}

fn kernel_client_stacked_patches_in_qemu() {
    let vm = client_vm();
    let b = &vm.main;
    let kver = &kc::kernel().kver;
    let (lp1, lp2) = (&vm.lp1, &vm.lp2);
    let booted = booted_version(b);
    assert_eq!(b.status("stack-apply1"), 0, "{}", b.output("stack-apply1"));
    assert_eq!(b.status("stack-apply2"), 0, "{}", b.output("stack-apply2"));
    // the patch applied last wins; the effective release is the last one's
    let both = b.value("stack-version-both");
    assert!(
        both.contains(&lp2.marker) && !both.contains(&lp1.marker),
        "{both}"
    );
    assert_eq!(b.value("stack-kuname-both"), lp2.info.effective);
    assert_eq!(b.value("stack-count-both"), "2");
    // the lower one cannot go while the upper one is applied
    assert_ne!(b.status("stack-undo-lower"), 0);
    let refusal = b.output("stack-undo-lower");
    assert!(
        refusal.contains(&format!(
            "patch {} cannot be removed while {} (applied later) is applied",
            lp1.info.id, lp2.info.id
        )),
        "{refusal}"
    );
    assert_eq!(b.value("stack-version-after-refusal"), both);
    let mods = b.value("stack-lsmod-after-refusal");
    assert!(
        mods.contains(&lp1.info.module) && mods.contains(&lp2.info.module),
        "{mods}"
    );
    // reverse order works
    assert_eq!(
        b.status("stack-undo-upper"),
        0,
        "{}",
        b.output("stack-undo-upper")
    );
    assert!(b.value("stack-version-lower-only").contains(&lp1.marker));
    assert_eq!(b.value("stack-kuname-lower-only"), lp1.info.effective);
    assert_eq!(
        b.status("stack-undo-lower-now"),
        0,
        "{}",
        b.output("stack-undo-lower-now")
    );
    assert_eq!(b.value("stack-version-none"), booted);
    assert_eq!(b.value("stack-lsmod-none"), "");
    // two at once, then remove --all (newest first)
    assert_eq!(
        b.status("stack-apply-two"),
        0,
        "{}",
        b.output("stack-apply-two")
    );
    assert!(b.value("stack-version-two").contains(&lp2.marker));
    assert_eq!(
        b.status("stack-remove-all"),
        0,
        "{}",
        b.output("stack-remove-all")
    );
    let out = b.output("stack-remove-all");
    let (p2, p1) = (
        out.find(&format!("removed {}", lp2.info.id)),
        out.find(&format!("removed {}", lp1.info.id)),
    );
    assert!(
        matches!((p2, p1), (Some(a), Some(b)) if a < b),
        "remove --all order:\n{out}"
    );
    assert!(
        out.contains(&format!("Effective kernel version is {kver}")),
        "{out}"
    );
    assert_eq!(b.value("stack-version-remove-all"), booted);
    assert_eq!(b.value("stack-lsmod-remove-all"), "");
    assert_eq!(b.value("stack-klp-remove-all"), "");
    assert_eq!(b.value("stack-count-end"), "0");
    assert!(b.has_line("scenario-exit hs-stack=0"));
    print_timings(
        b,
        &[
            "stack-apply1",
            "stack-apply2",
            "stack-undo-upper",
            "stack-undo-lower-now",
            "stack-apply-two",
        ],
    );
}

fn kernel_client_vmlinux_and_module_patch_in_qemu() {
    let vm = client_vm();
    let b = &vm.main;
    let lp = &vm.combo;
    assert_eq!(b.value("combo-traceable ext4_show_options"), "yes");
    let mounts = b.value("combo-mounts-before");
    assert!(mounts.starts_with("/dev/vda /mnt ext4 "), "{mounts}");
    assert!(!mounts.contains(&vm.combo_mounts_marker));
    assert_eq!(b.status("combo-apply"), 0, "{}", b.output("combo-apply"));
    // both objects patched by one module: vmlinux and ext4
    assert_eq!(b.value("combo-klp-objects").trim(), "ext4 vmlinux");
    let m = b.value("combo-mounts-patched");
    assert!(m.contains(&vm.combo_mounts_marker), "ext4 not patched: {m}");
    let v = b.value("combo-version-patched");
    assert!(v.contains(&lp.marker), "vmlinux not patched: {v}");
    assert_eq!(b.value("combo-kuname-patched"), lp.info.effective);
    assert_eq!(b.status("combo-undo"), 0, "{}", b.output("combo-undo"));
    assert_eq!(b.value("combo-mounts-after"), mounts);
    assert_eq!(
        b.value("combo-version-after"),
        b.value("combo-version-before")
    );
    assert_eq!(b.value("combo-lsmod-after"), "");
    print_timings(b, &["combo-apply", "combo-undo"]);
}

fn kernel_client_refuses_foreign_and_corrupt_patches_in_qemu() {
    let vm = client_vm();
    let b = &vm.main;
    assert_ne!(b.status("refuse-wrong"), 0);
    let msg = b.output("refuse-wrong");
    assert!(
        msg.contains(&format!("is for kernel build {}", vm.wrong_build_id))
            && msg.contains(&format!("this kernel is build {}", vm.build_id))
            && msg.contains("refusing"),
        "foreign-build refusal must name both builds:\n{msg}"
    );
    assert_eq!(b.value("refuse-wrong-lsmod"), "", "nothing loaded");
    assert_eq!(b.value("refuse-wrong-klp"), "");
    assert_eq!(b.value("refuse-wrong-count"), "0");
    assert_ne!(b.status("refuse-corrupt"), 0);
    let msg = b.output("refuse-corrupt");
    assert!(
        msg.contains("corrupt.hsp") && msg.contains("corrupt"),
        "{msg}"
    );
    assert_eq!(b.value("refuse-corrupt-lsmod"), "");
    assert_eq!(b.value("refuse-corrupt-klp"), "");
    assert_eq!(b.value("refuse-corrupt-count"), "0");
    assert_eq!(b.value("refuse-version"), booted_version(b));
}

fn kernel_client_stuck_transition_is_reverted_in_qemu() {
    let vm = client_vm();
    let b = &vm.main;
    let pid = b.value("stuck-reader-pid");
    let comm = b.value("stuck-reader-comm");
    assert_eq!(
        b.value("stuck-reader-stack-has-pipe_read"),
        "1",
        "reader blocked in pipe_read"
    );
    assert_ne!(b.status("stuck-apply"), 0, "apply must fail");
    let msg = b.output("stuck-apply");
    eprintln!("stuck transition report:\n{msg}");
    assert!(
        msg.contains(&format!(
            "the transition of {} did not finish",
            vm.pipe.info.module
        )) && msg.contains("it was reverted"),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("pid {pid} tid {pid} ({comm})")),
        "blocked task {pid} ({comm}) not named:\n{msg}"
    );
    assert!(
        msg.lines()
            .any(|l| l.trim_start().starts_with("[<") && l.contains("pipe_read+")),
        "no stack line with pipe_read:\n{msg}"
    );
    assert_eq!(b.value("stuck-lsmod-after"), "", "module still loaded");
    assert_eq!(
        b.value("stuck-klp-after"),
        "",
        "/sys/kernel/livepatch not empty"
    );
    assert_eq!(b.value("stuck-count-after"), "0");
    assert_eq!(
        b.value("stuck-version-after"),
        b.value("stuck-version-before")
    );
    assert_eq!(b.value("stuck-reader-alive"), "yes");
    eprintln!(
        "kernel timing [stuck-apply]: failed apply took {} s (timeout 3 s)",
        b.value("stuck-apply-seconds")
    );
}

fn kernel_client_patches_reapplied_after_reboot_in_qemu() {
    let vm = client_vm();
    let kver = &kc::kernel().kver;
    let (lp1, lp2) = (&vm.lp1, &vm.lp2);
    // boot 1: two patches applied, recorded on the disk
    let b1 = &vm.main;
    assert_eq!(
        b1.status("persist-apply"),
        0,
        "{}",
        b1.output("persist-apply")
    );
    assert!(b1.value("persist-version").contains(&lp2.marker));
    assert_eq!(b1.value("persist-kuname"), lp2.info.effective);
    assert_eq!(b1.value("persist-recorded"), "2");
    assert!(b1.has_line("init-done"));

    let r = reboots();
    // boot 2: fresh kernel, nothing applied until the hook runs
    let b2 = &r.reboot;
    assert!(b2.has_line("disk-mounted dev=/dev/vda"), "{}", b2.log);
    assert_eq!(b2.value("hook-cmdline-nouptrack"), "0");
    assert_eq!(b2.value("hook-kuname-before"), kver);
    assert!(!b2.value("hook-version-before").contains(&lp1.marker));
    assert!(!b2.value("hook-version-before").contains(&lp2.marker));
    assert_eq!(b2.status("hook"), 0, "{}", b2.output("hook"));
    let hook = b2.output("hook");
    eprintln!("boot hook (reboot):\n{hook}");
    for lp in [lp1, lp2] {
        assert!(
            hook.contains(&format!("hotsplice boot: {}: re-applied", lp.info.id)),
            "{hook}"
        );
    }
    assert!(hook.contains(&format!(
        "hotsplice boot: effective kernel {}",
        lp2.info.effective
    )));
    assert_eq!(b2.value("hook-uname-r"), kver);
    assert_eq!(b2.value("hook-kuname-after"), lp2.info.effective);
    assert!(b2.value("hook-version-after").contains(&lp2.marker));
    let mods = b2.value("hook-lsmod");
    assert!(
        mods.contains(&lp1.info.module) && mods.contains(&lp2.info.module),
        "{mods}"
    );
    assert_eq!(b2.value("hook-count"), "2");
    let show = b2.output("hook-show");
    let (p1, p2) = (
        show.find(&format!("[{}]", lp1.info.id)),
        show.find(&format!("[{}]", lp2.info.id)),
    );
    assert!(
        matches!((p1, p2), (Some(a), Some(b)) if a < b),
        "order kept:\n{show}"
    );

    // boot 3: nouptrack: nothing applied, and the hook says why
    let b3 = &r.nouptrack;
    assert_eq!(b3.value("hook-cmdline-nouptrack"), "1");
    assert_eq!(b3.status("hook"), 0, "{}", b3.output("hook"));
    let hook = b3.output("hook");
    eprintln!("boot hook (nouptrack):\n{hook}");
    assert!(
        hook.contains("nouptrack on the kernel command line: no patches applied"),
        "{hook}"
    );
    assert_eq!(b3.value("hook-kuname-after"), kver);
    assert_eq!(
        b3.value("hook-version-after"),
        b3.value("hook-version-before")
    );
    assert!(!b3.value("hook-version-after").contains(&lp2.marker));
    assert_eq!(b3.value("hook-lsmod"), "");
    assert_eq!(b3.value("hook-count"), "0");
}

/// Every apply and undo of the main boot, in log order: each patch that
/// was applied was removed again, except the two hs-persist-apply leaves
/// for the reboot, and each removal was of a patch then applied; each
/// reported transition took no longer than its whole command. The timings
/// are printed (docs/benchmarks.md quotes them).
fn kernel_client_timings_in_qemu() {
    let vm = client_vm();
    let b = &vm.main;
    // (transition, whole command) of every apply and of every undo.
    let mut apply: Vec<(f64, f64)> = Vec::new();
    let mut undo: Vec<(f64, f64)> = Vec::new();
    let mut applied: Vec<String> = Vec::new();
    for l in &b.lines {
        let Some((key, line)) = l.split_once("-out=") else {
            continue;
        };
        let mut words = line.split_whitespace();
        let (verb, id) = (words.next(), words.next());
        match (verb, id) {
            (Some("applied"), Some(id)) => {
                assert!(
                    !applied.iter().any(|a| a == id),
                    "[{key}] {id} applied twice without a removal:\n{}",
                    b.log
                );
                applied.push(id.to_string());
            }
            (Some("removed"), Some(id)) => {
                let at = applied.iter().position(|a| a == id).unwrap_or_else(|| {
                    panic!("[{key}] removed {id}, which was not applied:\n{}", b.log)
                });
                applied.remove(at);
            }
            _ => continue,
        }
        if let Some((t, all)) = kc::transition_times(line) {
            let what = line.split(':').next().unwrap_or(line);
            eprintln!("kernel timing: {what}: transition {t:.1} ms, {all:.1} ms in all");
            assert!(
                t >= 0.0 && t <= all,
                "[{key}] transition {t} ms of a {all} ms command: {line}"
            );
            if line.starts_with("applied") {
                apply.push((t, all));
            } else {
                undo.push((t, all));
            }
        }
    }
    let left: std::collections::BTreeSet<&str> = applied.iter().map(String::as_str).collect();
    let want: std::collections::BTreeSet<&str> = [vm.lp1.info.id.as_str(), vm.lp2.info.id.as_str()]
        .into_iter()
        .collect();
    assert_eq!(
        left, want,
        "patches left applied at the end of the main boot (hs-persist-apply leaves two)"
    );
    assert!(
        !apply.is_empty() && !undo.is_empty(),
        "no timed apply or undo in the serial log:\n{}",
        b.log
    );
    let median = |mut v: Vec<f64>| -> f64 {
        v.sort_by(|a, b| a.total_cmp(b));
        if v.len() % 2 == 1 {
            v[v.len() / 2]
        } else {
            (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
        }
    };
    for (what, v) in [("apply", &apply), ("undo", &undo)] {
        eprintln!(
            "kernel timing median over {} kernel {what} runs: transition {:.1} ms, whole command {:.1} ms",
            v.len(),
            median(v.iter().map(|x| x.0).collect()),
            median(v.iter().map(|x| x.1).collect())
        );
    }
    eprintln!(
        "kernel timing: main boot {:.1}s (builds, wraps and initramfs before it)",
        b.took.as_secs_f64()
    );
}

/// Only a kernel panic before the guest's init printed anything makes
/// `boot` try again; a panic once the scenarios run is the test's failure.
fn boot_retried_only_for_a_panic_before_init() {
    use std::os::unix::process::ExitStatusExt;
    let failure = |log: &str| kc::BootFailure {
        status: std::process::ExitStatus::from_raw(1 << 8),
        stderr: String::new(),
        log: log.to_string(),
    };
    let early = "[    0.2] ..MP-BIOS bug: 8254 timer not connected to IO-APIC\n\
                 [    0.3] Kernel panic - not syncing: IO-APIC + timer doesn't work!\n";
    assert!(failure(early).panicked_before_init());
    let late = "[    1.0] Run /init as init process\n\
                HSTEST init-start uname-r=6.1.0\n\
                [    9.0] Kernel panic - not syncing: Fatal exception\n";
    assert!(!failure(late).panicked_before_init());
    let no_panic = "[    1.0] Run /init as init process\n";
    assert!(!failure(no_panic).panicked_before_init());
}

/// The kernel side of a fleet report comes from a real kernel: in the
/// guest, `hotsplice sync --report-to FILE` with a kernel patch applied;
/// the host's `hotsplice-server` imports the report, and Uptrack's
/// describe shows the effective kernel and the installed update.
fn kernel_client_fleet_report_in_qemu() {
    let vm = client_vm();
    let b = &vm.main;
    let lp = &vm.lp1;
    assert_eq!(b.status("fleet-apply"), 0, "{}", b.output("fleet-apply"));
    assert_eq!(b.status("fleet-report"), 0, "{}", b.output("fleet-report"));
    assert!(b.has_line("scenario-exit hs-fleet-report=0"));
    let text = b.value("fleet-report-json");
    let report: hotsplice_fleet::report::Report =
        serde_json::from_str(text).unwrap_or_else(|e| panic!("the guest's report: {e}\n{text}"));
    report.check().expect("a valid report");
    assert_eq!(report.kernel.original_release, kc::kernel().kver);
    assert_eq!(report.kernel.effective_release, lp.info.effective);
    assert_eq!(report.kernel.build_id, vm.build_id);
    assert!(report.kernel.livepatch);
    assert!(
        report.kernel.applied.iter().any(|p| p.id == lp.info.id),
        "{:?}",
        report.kernel.applied
    );

    // The host's server imports it.
    let server_bin = kc::host_hotsplice().with_file_name("hotsplice-server");
    assert!(
        server_bin.is_file(),
        "{} does not exist: build the workspace (it has the server)",
        server_bin.display()
    );
    let data = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(&server_bin)
        .args(["init", "--data"])
        .arg(data.path().join("d"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let init = String::from_utf8_lossy(&out.stdout).into_owned();
    let field = |n: &str| {
        init.lines()
            .find_map(|l| l.strip_prefix(&format!("{n}: ")))
            .unwrap_or_else(|| panic!("{init}"))
            .to_string()
    };
    let (user, key) = (field("api-user"), field("api-key"));
    let mut child = std::process::Command::new(&server_bin)
        .args(["run", "--listen", "127.0.0.1:0", "--data"])
        .arg(data.path().join("d"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    struct Reap(std::process::Child);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut first = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut first,
    )
    .unwrap();
    let _reap = Reap(child);
    let url = first
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .to_string();
    let call = |method: &str, path: &str| {
        ureq::request(method, &format!("{url}{path}"))
            .set("X-Uptrack-User", &user)
            .set("X-Uptrack-Key", &key)
    };
    call("POST", hotsplice_fleet::api::IMPORT_REPORT)
        .set("Content-Type", "application/json")
        .send_string(text)
        .expect("import the guest's report");
    let d: serde_json::Value = call("GET", &format!("/api/1/machine/{}/describe", report.uuid))
        .call()
        .expect("describe")
        .into_json()
        .unwrap();
    assert_eq!(
        d["effective_kernel"].as_str(),
        Some(lp.info.effective.as_str()),
        "{d}"
    );
    assert_eq!(
        d["original_kernel"].as_str(),
        Some(kc::kernel().kver.as_str()),
        "{d}"
    );
    assert!(
        d["installed_updates"]
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u["ID"].as_str() == Some(lp.info.id.as_str())),
        "{d}"
    );
}

/// Fixes `create --kernel` builds with the forms it learnt to carry, applied
/// together and removed in one boot: a static branch on a vmlinux key
/// (mm/rmap.c, found by asking kbuild), alternatives and `.BTF_ids`
/// (kernel/bpf/queue_stack_maps.c), and a module's function with
/// dynamic-debug descriptors and their jump labels (fs/binfmt_misc.c),
/// applied before the module loads: loading it patches it, and the
/// carried `pr_debug` prints once enabled.
fn kernel_created_fixes_apply_together_and_undo_in_qemu() {
    let k = kc::kernel();
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("kernel-created");
    let _ = std::fs::remove_dir_all(&dir);
    let (patches, keys) = (dir.join("patches"), dir.join("keys"));
    for d in [&patches, &keys] {
        std::fs::create_dir_all(d).expect("mkdir");
    }
    let (key, public) = kc::keygen(&keys, "kerneltest");
    let fixes = [
        "mm_rmap.diff",
        "bpf_queue_stack_btf_ids.diff",
        "binfmt_misc_pr_debug.diff",
    ];
    let mut lps = Vec::new();
    for fix in fixes {
        let ko = generated_module(fix, &dir.join(fix.trim_end_matches(".diff")));
        lps.push(make_lp(ko, &patches, &key, String::new()));
    }
    let g = |p: &Path| format!("/patches/{}", p.file_name().unwrap().to_string_lossy());
    let files: Vec<String> = lps.iter().map(|l| g(&l.hsp)).collect();
    let mods: Vec<String> = lps.iter().map(|l| l.info.module.clone()).collect();
    let env_file = dir.join("hs-test.env");
    std::fs::write(
        &env_file,
        format!(
            "export HOTSPLICE_STATE_DIR=/tmp/hotsplice-state\n\
             export HOTSPLICE_CONFIG_DIR=/etc/hotsplice\n\
             CREATED_FILES='{}'\nCREATED_MODS='{}'\nBM_MOD={}\n",
            files.join(" "),
            mods.join(" "),
            mods[2]
        ),
    )
    .unwrap();
    let bin = kc::static_hotsplice();
    let binfmt = k.env_path("MODDIR").join("kernel/fs/binfmt_misc.ko");
    let initrd = dir.join("initrd.zst");
    kc::make_initrd(
        &initrd,
        &[
            (patches.as_path(), "/patches"),
            (public.as_path(), "/etc/hotsplice/keys/kerneltest.pub"),
            (env_file.as_path(), "/etc/hs-test.env"),
            (bin.as_path(), "/usr/sbin/hotsplice"),
            (binfmt.as_path(), "/lib/hotsplice/binfmt_misc.ko"),
        ],
    );
    let b = kc::boot(&initrd, None, "hstest=hs-created", &dir.join("serial.log"));
    assert_eq!(
        b.status("created-apply"),
        0,
        "{}",
        b.output("created-apply")
    );
    for m in &mods[..2] {
        assert_eq!(
            b.value(&format!("created-patched {m} vmlinux")),
            "1",
            "{}",
            b.log
        );
        assert_eq!(b.value(&format!("created-transition {m}")), "0");
    }
    // Not loaded yet: nothing to patch, and applying did not need it.
    assert_eq!(
        b.value(&format!("created-patched {} binfmt_misc", mods[2])),
        "0"
    );
    assert_eq!(
        b.status("created-insmod"),
        0,
        "{}",
        b.output("created-insmod")
    );
    assert_eq!(b.value("created-patched-after-insmod"), "1", "{}", b.log);
    // The carried descriptors are the patch module's, and print.
    let own: u32 = b.value("created-dyndbg-own").parse().expect("count");
    assert!(own > 0, "no descriptor of the patch registered:\n{}", b.log);
    assert_eq!(b.value("created-registered"), "enabled");
    let printed: u32 = b.value("created-pr-debug").parse().expect("count");
    assert!(
        printed > 0,
        "the carried pr_debug did not print:\n{}",
        b.log
    );
    assert_eq!(b.status("created-undo"), 0, "{}", b.output("created-undo"));
    assert_eq!(b.value("created-lsmod-after"), "");
    assert_eq!(b.value("created-klp-after"), "");
    for bad in ["BUG:", "Oops", "WARNING:", "general protection"] {
        assert!(!b.log.contains(bad), "{bad} in the guest's log:\n{}", b.log);
    }
    assert!(b.has_line("scenario-exit hs-created=0"));
}

fn main() {
    kc::pin();
    harness::main_with(
        kc::skip_reason(),
        hotsplice_testsupport::tests![
            livepatch_module_changes_kernel_behaviour_in_qemu,
            guest_state_disk_survives_reboot_in_qemu,
            kernel_client_apply_uname_show_undo_in_qemu,
            kernel_client_uptrack_commands_in_qemu,
            kernel_client_stacked_patches_in_qemu,
            kernel_client_vmlinux_and_module_patch_in_qemu,
            kernel_client_refuses_foreign_and_corrupt_patches_in_qemu,
            kernel_client_stuck_transition_is_reverted_in_qemu,
            kernel_client_patches_reapplied_after_reboot_in_qemu,
            kernel_client_timings_in_qemu,
            kernel_client_fleet_report_in_qemu,
            kernel_created_fixes_apply_together_and_undo_in_qemu,
        ],
        hotsplice_testsupport::tests![boot_retried_only_for_a_panic_before_init],
    );
}
