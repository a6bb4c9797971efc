//! Kernel tests in a real Debian 12 kernel booted under QEMU (TCG):
//! a hand-written livepatch module (tests/kernel/sample-livepatch), built
//! against the kernel's own headers, changes /proc/version while loaded and
//! the change goes away when it is disabled and unloaded; and a state disk
//! keeps a file across boots.
//!
//! Needs network access to the Debian archive on the first run (fetch.sh
//! caches ~230 MB under .cache/kernel). Skipped only when
//! HOTSPLICE_SKIP_KERNEL_TESTS=1.

mod kernel_common;

use kernel_common as kc;

const MARKER: &str = "[hotsplice-sample-livepatch]";

#[test]
fn livepatch_module_changes_kernel_behaviour_in_qemu() {
    if let Some(why) = kc::skip_reason() {
        eprintln!("SKIPPED livepatch_module_changes_kernel_behaviour_in_qemu: {why}");
        return;
    }
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

#[test]
fn guest_state_disk_survives_reboot_in_qemu() {
    if let Some(why) = kc::skip_reason() {
        eprintln!("SKIPPED guest_state_disk_survives_reboot_in_qemu: {why}");
        return;
    }
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
