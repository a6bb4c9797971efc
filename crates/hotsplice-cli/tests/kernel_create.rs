//! `hotsplice create --kernel` against Debian 12's kernel source, on the
//! host: the module it builds, its livepatch relocations and symbols, its
//! metadata, and the changes it refuses. (Loading the modules into a real
//! kernel is proven in `kernel_vm.rs`.) Reported as ignored with
//! HOTSPLICE_SKIP_KERNEL_TESTS=1 (`harness = false`: a harness of its own).

mod common;
mod kernel_common;

use common::*;
use hotsplice_testsupport::harness;
use kernel_common as kc;
use std::path::{Path, PathBuf};
use std::process::Command;

struct KEnv {
    src: PathBuf,
    modules: PathBuf,
    kdir: PathBuf,
    config: PathBuf,
    release: String,
}

fn repo() -> PathBuf {
    kc::repo_root()
}

/// The cached kernel (fetched on first use).
fn kenv() -> KEnv {
    let k = kc::kernel();
    KEnv {
        src: k.env_path("KSRC"),
        modules: k.env_path("MODDIR"),
        kdir: k.env_path("KDIR"),
        config: k.config(),
        release: k.kver.clone(),
    }
}

fn create(k: &KEnv, diff: &str, out: &Path) -> CmdOut {
    let env = test_env();
    env.hs([
        "create".as_ref(),
        "--kernel".as_ref(),
        "--sign".as_ref(),
        env.key.as_os_str(),
        "--patch".as_ref(),
        repo().join("tests/kernel/fixes").join(diff).as_os_str(),
        "--config".as_ref(),
        k.config.as_os_str(),
        "--kdir".as_ref(),
        k.kdir.as_os_str(),
        "--modules".as_ref(),
        k.modules.as_os_str(),
        "--build-id".as_ref(),
        "0123456789abcdef0123456789abcdef01234567".as_ref(),
        "--release".as_ref(),
        k.release.as_ref(),
        "--json".as_ref(),
        "-o".as_ref(),
        out.as_os_str(),
        k.src.as_os_str(),
    ] as [&std::ffi::OsStr; 20])
}

fn readelf(args: &[&str], file: &Path) -> String {
    let o = Command::new("readelf")
        .args(args)
        .arg(file)
        .output()
        .expect("readelf");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn kernel_patch_for_a_module_and_vmlinux_uses_livepatch_relocations() {
    require_root();
    let k = kenv();
    let k = &k;
    let out = temp_dir("kcreate");
    let r = create(k, "ext4_version.diff", out.path());
    r.assert_ok("create --kernel");
    let module = out.path().join(
        r.stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix("\"module_path\": \""))
            .map(|l| l.trim_end_matches("\",").to_string())
            .expect("module_path"),
    );
    // Functions of both objects, and only them.
    assert!(
        r.stdout.contains("\"ext4_show_options\"") && r.stdout.contains("\"version_proc_show\""),
        "{}",
        r.describe()
    );
    assert!(
        !r.stdout.contains("_ext4_show_options\""),
        "only the changed function: {}",
        r.describe()
    );
    let sections = readelf(&["-SW"], &module);
    assert!(
        sections.contains(".klp.rela.ext4.text.ext4_show_options"),
        "{sections}"
    );
    assert!(
        sections.contains(".klp.rela.vmlinux.text.version_proc_show"),
        "{sections}"
    );
    let relocs = readelf(&["-rW"], &module);
    // A static function of the module and a non-exported vmlinux symbol.
    assert!(
        relocs.contains(".klp.sym.ext4._ext4_show_options,0"),
        "{relocs}"
    );
    assert!(
        relocs.contains(".klp.sym.vmlinux.linux_proc_banner,0"),
        "{relocs}"
    );
    let syms = readelf(&["-sW"], &module);
    assert!(
        syms.contains("OS [0xff20] .klp.sym.ext4._ext4_show_options,0"),
        "SHN_LIVEPATCH: {syms}"
    );
    let modinfo = Command::new("modinfo")
        .arg(&module)
        .output()
        .expect("modinfo");
    let modinfo = String::from_utf8_lossy(&modinfo.stdout);
    for key in [
        "livepatch:      Y",
        "hotsplice_id:",
        "hotsplice_build_id:",
        "hotsplice_effective:",
    ] {
        assert!(modinfo.contains(key), "{key}: {modinfo}");
    }
    assert!(
        modinfo.contains(&format!("vermagic:       {} SMP", k.release)),
        "{modinfo}"
    );
    let hsp = out.path().join(
        r.stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix("\"path\": \""))
            .map(|l| l.trim_end_matches("\",").to_string())
            .expect("path"),
    );
    let info = test_env().hs(["info", "--json", hsp.to_str().unwrap()]);
    info.assert_ok("info");
    assert!(
        info.stdout.contains("\"kind\": \"kernel\"") && info.stdout.contains("\"signed\": true"),
        "{}",
        info.describe()
    );
}

fn kernel_create_refuses_init_code_and_header_changes() {
    require_root();
    let k = kenv();
    let k = &k;
    let out = temp_dir("kcreate-refuse");
    let r = create(k, "init.diff", out.path());
    r.assert_failed("__init change");
    assert!(r.stderr.contains("__init"), "{}", r.describe());
    let r = create(k, "header.diff", out.path());
    r.assert_failed("header change");
    assert!(r.stderr.contains("not a C file"), "{}", r.describe());
    // The tree is left as it was: the next build works.
    create(k, "version.diff", out.path()).assert_ok("create after refusals");
}

/// The value of `"key": [...]` in create's JSON, as one string.
fn json_list(stdout: &str, key: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(stdout).expect("create --json");
    v[key].to_string()
}

/// kbuild says which object a file is linked into: `mm/rmap.c` through
/// `mmu-$(CONFIG_MMU)` pulled into `obj-y` (vmlinux), `mgmt/user_config.o`
/// listed in the parent directory's Makefile (module ksmbd), and a file of
/// a directory this configuration does not build is refused before
/// anything is compiled.
fn kernel_create_asks_kbuild_which_object_a_file_is_linked_into() {
    require_root();
    let k = kenv();
    let k = &k;
    let out = temp_dir("kcreate-owner");
    let r = create(k, "mm_rmap.diff", out.path());
    r.assert_ok("create mm/rmap.c");
    assert!(
        json_list(&r.stdout, "functions").contains("\"page_address_in_vma\"")
            && json_list(&r.stdout, "objects") == "[\"vmlinux\"]",
        "{}",
        r.describe()
    );
    let r = create(k, "ksmbd_user_config.diff", out.path());
    r.assert_ok("create fs/smb/server/mgmt/user_config.c");
    assert!(
        json_list(&r.stdout, "functions").contains("\"ksmbd_alloc_user\"")
            && json_list(&r.stdout, "objects") == "[\"ksmbd\"]",
        "{}",
        r.describe()
    );
    let unbuilt = k.src.join("fs/ntfs/super.o");
    let _ = std::fs::remove_file(&unbuilt);
    let r = create(k, "ntfs_unbuilt.diff", out.path());
    r.assert_failed("a file this configuration does not build");
    assert!(
        r.stderr.contains("fs/ntfs/super.c")
            && r.stderr.contains("not built with this configuration"),
        "{}",
        r.describe()
    );
    assert!(
        !unbuilt.exists(),
        "refused before building: {} was compiled",
        unbuilt.display()
    );
}

/// A real stable fix (tests/kernel/corpus/18-usb-chaoskey.diff, CVE-2026-64455)
/// drops the last `usb_dbg` of chaoskey_release(), so the function no longer
/// needs its `__func__`: the compiler renumbers every `__func__.N` of the
/// file and same-named constants now hold other names. They are read-only
/// and compared by content, so this is no change of existing data.
fn kernel_create_renumbered_func_names_are_no_changed_data() {
    require_root();
    let k = kenv();
    let out = temp_dir("kcreate-func");
    let fix = repo().join("tests/kernel/corpus/18-usb-chaoskey.diff");
    // A kernel newer than the corpus' base (6.1.176) already has the fix:
    // then its reverse is the change to build (it renumbers the same
    // constants the other way).
    let already = Command::new("patch")
        .args(["-p1", "-R", "--dry-run", "-s", "-f", "-d"])
        .arg(&k.src)
        .stdin(std::fs::File::open(&fix).expect("corpus diff"))
        .output()
        .expect("patch")
        .status
        .success();
    // The reversal itself, checked on every tree: undone, the reversed
    // diff is the fix again.
    let text = std::fs::read_to_string(&fix).unwrap();
    let rev_text = reversed(&text);
    assert_eq!(reversed(&rev_text), text, "reversing twice");
    let mut check = Command::new("patch")
        .args(["-p1", "--dry-run", "-s", "-f", "-d"])
        .arg(&k.src)
        .args(if already { vec![] } else { vec!["-R"] })
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("patch");
    std::io::Write::write_all(&mut check.stdin.take().unwrap(), rev_text.as_bytes()).unwrap();
    let check = check.wait_with_output().unwrap();
    assert!(
        check.status.success(),
        "the reversed diff does not fit the tree: {}",
        String::from_utf8_lossy(&check.stdout)
    );
    let diff = if already {
        let rev = out.path().join("chaoskey-reversed.diff");
        std::fs::write(&rev, &rev_text).unwrap();
        println!("the tree has the chaoskey fix: building its reverse");
        rev
    } else {
        fix
    };
    let r = create(&k, diff.to_str().unwrap(), out.path());
    r.assert_ok("create drivers/usb/misc/chaoskey.c");
    assert!(
        json_list(&r.stdout, "functions").contains("\"chaoskey_release\"")
            && json_list(&r.stdout, "objects") == "[\"chaoskey\"]",
        "{}",
        r.describe()
    );
}

/// A unified diff turned around: what it removes it adds, and back.
fn reversed(diff: &str) -> String {
    let lines: Vec<&str> = diff.lines().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < lines.len() {
        let l = lines[i];
        let next = lines.get(i + 1).copied().unwrap_or("");
        if let (Some(a), Some(b)) = (l.strip_prefix("--- "), next.strip_prefix("+++ ")) {
            out += &format!("--- {b}\n+++ {a}\n");
            i += 2;
            continue;
        }
        let line = if let Some(h) = l.strip_prefix("@@ -") {
            let (ranges, tail) = h.split_once(" @@").expect("hunk header");
            let (old, new) = ranges.split_once(" +").expect("hunk ranges");
            format!("@@ -{new} +{old} @@{tail}")
        } else if let Some(r) = l.strip_prefix('+') {
            format!("-{r}")
        } else if let Some(r) = l.strip_prefix('-') {
            format!("+{r}")
        } else {
            l.to_string()
        };
        out += &line;
        out.push('\n');
        i += 1;
    }
    out
}

fn module_of(stdout: &str) -> PathBuf {
    let v: serde_json::Value = serde_json::from_str(stdout).expect("create --json");
    PathBuf::from(v["module_path"].as_str().expect("module_path"))
}

/// Dynamic-debug descriptors: a fix that adds lines moves the line number
/// of every `pr_debug` below it, which refuses nothing; a changed function
/// that uses `pr_debug` carries its descriptors and their static-key jump
/// entries (keys inside the patch: ordinary relocations). A changed
/// function whose static key belongs to a module (an inlined tracepoint
/// of ext4) is refused, naming the function and the key.
fn kernel_create_carries_static_keys_and_dynamic_debug_descriptors() {
    require_root();
    let k = kenv();
    let k = &k;
    let out = temp_dir("kcreate-keys");
    let r = create(k, "binfmt_misc_lines.diff", out.path());
    r.assert_ok("lines added above pr_debug descriptors");
    assert_eq!(
        json_list(&r.stdout, "functions"),
        "[\"load_misc_binary\"]",
        "{}",
        r.describe()
    );
    let sections = readelf(&["-SW"], &module_of(&r.stdout));
    assert!(!sections.contains("__dyndbg"), "{sections}");

    let r = create(k, "binfmt_misc_pr_debug.diff", out.path());
    r.assert_ok("a changed function with pr_debug");
    // create_entry() is inlined into its only caller.
    assert!(
        json_list(&r.stdout, "functions").contains("\"bm_register_write\""),
        "{}",
        r.describe()
    );
    let module = module_of(&r.stdout);
    let sections = readelf(&["-SW"], &module);
    assert!(
        sections.contains(" __dyndbg ") && sections.contains(" __jump_table "),
        "{sections}"
    );
    assert!(
        !sections.contains(".klp.rela.binfmt_misc.__jump_table"),
        "{sections}"
    );
    let relocs = readelf(&["-rW"], &module);
    let jt = relocs
        .split("Relocation section")
        .find(|s| s.starts_with(" '.rela__jump_table'"))
        .unwrap_or_else(|| panic!("no .rela__jump_table: {relocs}"));
    assert!(
        jt.contains("__dyndbg"),
        "keys in the carried descriptors: {jt}"
    );

    let r = create(k, "ext4_tracepoint.diff", out.path());
    r.assert_failed("a static key of a module");
    assert!(
        r.stderr.contains("`ext4_sync_fs`") && r.stderr.contains("__tracepoint_ext4_sync_fs"),
        "{}",
        r.describe()
    );
}

/// A fix that moves the `.BTF_ids` slots' build-numbered names
/// (`__BTF_ID__struct__bpf_queue_stack__NNNN`) changes no data: the map
/// operations that point at the slot are the same; the changed functions
/// use alternatives, which are carried.
fn kernel_create_matches_build_numbered_btf_ids_by_what_they_hold() {
    require_root();
    let k = kenv();
    let out = temp_dir("kcreate-btf");
    let r = create(&k, "bpf_queue_stack_btf_ids.diff", out.path());
    r.assert_ok("create kernel/bpf/queue_stack_maps.c");
    let f = json_list(&r.stdout, "functions");
    assert!(
        f.contains("\"__queue_map_get\"") && !f.contains("map_ops"),
        "{}",
        r.describe()
    );
    let sections = readelf(&["-SW"], &module_of(&r.stdout));
    assert!(sections.contains(" .altinstructions "), "{sections}");
}

/// Two `__key.0` (lockdep keys in `.bss`) in nfs.ko, which is not loaded
/// here: the position livepatch needs is read from the module's own symbol
/// table. Checked against that table independently: the meant one is the
/// occurrence among fs/nfs/direct.c's symbols (next to
/// `nfs_file_direct_read.cold`).
fn kernel_create_positions_module_symbols_from_the_ko() {
    require_root();
    let k = kenv();
    let out = temp_dir("kcreate-pos");
    let r = create(&k, "nfs_direct_lock_key.diff", out.path());
    r.assert_ok("create fs/nfs/direct.c");
    let ko = k.modules.join("kernel/fs/nfs/nfs.ko");
    let table = readelf(&["-sW"], &ko);
    let names: Vec<&str> = table
        .lines()
        .filter_map(|l| l.split_whitespace().nth(7))
        .collect();
    let keys: Vec<usize> = names
        .iter()
        .enumerate()
        .filter(|(_, n)| **n == "__key.0")
        .map(|(i, _)| i)
        .collect();
    assert!(keys.len() >= 2, "nfs.ko has {} __key.0", keys.len());
    let meant = keys
        .iter()
        .position(|&i| {
            names[i.saturating_sub(8)..(i + 8).min(names.len())]
                .contains(&"nfs_file_direct_read.cold")
        })
        .expect("a __key.0 among direct.c's symbols")
        + 1;
    let module = module_of(&r.stdout);
    let relocs = readelf(&["-rW"], &module);
    assert!(
        relocs.contains(&format!(".klp.sym.nfs.__key.0,{meant} ")),
        "position {meant} of {}: {relocs}",
        keys.len()
    );
    // What sunrpc exports to nfs is reached by livepatch relocations
    // applied when nfs arrives (its own dependencies loaded by then): the
    // patch depends on no module and loads before nfs does.
    assert!(relocs.contains(".klp.sym.sunrpc.nfs_debug,0"), "{relocs}");
    let depends = Command::new("modinfo")
        .args(["-F", "depends"])
        .arg(&module)
        .output()
        .expect("modinfo");
    assert_eq!(String::from_utf8_lossy(&depends.stdout).trim(), "");
}

fn main() {
    kc::pin();
    harness::main(
        kc::skip_reason(),
        hotsplice_testsupport::tests![
            kernel_patch_for_a_module_and_vmlinux_uses_livepatch_relocations,
            kernel_create_refuses_init_code_and_header_changes,
            kernel_create_asks_kbuild_which_object_a_file_is_linked_into,
            kernel_create_carries_static_keys_and_dynamic_debug_descriptors,
            kernel_create_matches_build_numbered_btf_ids_by_what_they_hold,
            kernel_create_positions_module_symbols_from_the_ko,
            kernel_create_renumbered_func_names_are_no_changed_data,
        ],
    );
}
