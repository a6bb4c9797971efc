//! Patch records forged by an unprivileged process. Any user can write
//! anything into an anonymous read+execute mapping of their own processes,
//! including something that looks like the record `apply` leaves at the
//! start of a patch mapping. Root's `show`, `remove` and `undo` read those
//! records out of every process: they must stay quick and small whatever a
//! record claims, say which records are forged or corrupt, go on with the
//! other processes, and never act on such a record.
//!
//! Needs root, cc, make, patch and util-linux's setpriv.

mod common;

use common::*;
use std::fs;
use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// A process that maps six forged records next to its own code:
///
/// * `A1`: a record length of 4 GiB in a one-page mapping;
/// * `A2`: a record length of 1 GiB that fits its (1 GiB, unpopulated)
///   mapping;
/// * `forgedbb`: saved bytes that are not hex, over a real jump;
/// * `forgedcc`: one saved byte where the jump wrote five;
/// * `forgeddd`: a replaced function at an address nothing maps;
/// * `forgedee`: everything right but `map_len`, 16 MiB longer than what
///   is mapped there.
///
/// The jumps at `victim_b`, `victim_c` and `victim_e` lead into the forged
/// mappings as a real patch's would, so acting on those records would
/// change the process's code or unmap its memory. It prints `ready`, then
/// every 100 ms `sum X`, a hash of its code and of every forged mapping,
/// which it reads itself (so it dies if one is unmapped).
const HOSTILE_C: &str = r#"
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

#ifndef PR_SET_VMA
#define PR_SET_VMA 0x53564d41
#define PR_SET_VMA_ANON_NAME 0
#endif
#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif

#define PAGE 4096UL
#define MAGIC "HOTSPLICE-IMAGE1"

__attribute__((noinline, aligned(64))) int victim_b(int x) { return x * 3 + 1; }
__attribute__((noinline, aligned(64))) int victim_c(int x) { return x * 5 + 2; }
__attribute__((noinline, aligned(64))) int victim_e(int x) { return x * 7 + 3; }

struct region { unsigned char *at; size_t len; };
static struct region regions[8];
static int nregions;
static unsigned long next_hint;

/* A mapping within jump reach of the code, never next to another one,
   its first `writable` bytes writable (read-only pages cost no memory
   commitment, whatever the overcommit policy). */
static unsigned char *map_near(size_t len, size_t writable, const char *name)
{
	for (int i = 0; i < 256; i++) {
		unsigned long hint = next_hint;
		next_hint += (len + (64UL << 20)) & ~(PAGE - 1);
		void *p = mmap((void *)hint, len, PROT_READ,
			       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE, -1, 0);
		if (p == MAP_FAILED)
			continue;
		if ((unsigned long)p != hint) {
			munmap(p, len);
			continue;
		}
		if (mprotect(p, writable, PROT_READ | PROT_WRITE) != 0) {
			perror("mprotect");
			exit(1);
		}
		prctl(PR_SET_VMA, PR_SET_VMA_ANON_NAME, (unsigned long)p, len, (unsigned long)name);
		regions[nregions].at = p;
		regions[nregions].len = len;
		nregions++;
		return p;
	}
	fprintf(stderr, "no room near the code\n");
	exit(1);
}

static void put_prefix(unsigned char *at, uint32_t len)
{
	memcpy(at, MAGIC, 16);
	memcpy(at + 16, &len, 4);
}

static void seal(unsigned char *at, size_t len)
{
	if (mprotect(at, len, PROT_READ | PROT_EXEC) != 0) {
		perror("mprotect");
		exit(1);
	}
}

/* Write `jmp code` over the entry of `fn`, as apply does; returns the hex
   of the bytes it overwrote. */
static void jump_over(void *fn, unsigned long code, char saved[11])
{
	unsigned long at = (unsigned long)fn;
	unsigned long page = at & ~(PAGE - 1);
	unsigned char *p = (unsigned char *)at;
	for (int i = 0; i < 5; i++)
		sprintf(saved + 2 * i, "%02x", p[i]);
	if (mprotect((void *)page, 2 * PAGE, PROT_READ | PROT_WRITE | PROT_EXEC) != 0) {
		perror("mprotect text");
		exit(1);
	}
	int32_t rel = (int32_t)(code - (at + 5));
	p[0] = 0xe9;
	memcpy(p + 1, &rel, 4);
	mprotect((void *)page, 2 * PAGE, PROT_READ | PROT_EXEC);
}

/* A record that is right in every way but `saved`, `addr` and `map_len`,
   which the caller chooses. */
static void forge(const char *id, void *fn, unsigned long addr, const char *saved_fmt,
		  unsigned long extra_len)
{
	size_t len = 4 * PAGE;
	char name[32];
	snprintf(name, sizeof name, "hotsplice:%s", id);
	unsigned char *at = map_near(len, len, name);
	unsigned long code = (unsigned long)at + PAGE;
	memset(at + PAGE, 0xcc, 64);
	char saved[11] = "";
	if (fn) {
		jump_over(fn, code, saved);
		addr = (unsigned long)fn;
	}
	char saved_field[32];
	snprintf(saved_field, sizeof saved_field, saved_fmt, saved);
	char json[2048];
	int n = snprintf(json, sizeof json,
		"{\"patch_id\":\"%s\",\"description\":\"\",\"target_name\":\"hostile\","
		"\"target_build_id\":\"ab\",\"target_bias\":0,\"applied_at\":1,\"sequence\":%d,"
		"\"tool\":\"hotsplice 0.1.0\",\"map_start\":%lu,\"map_len\":%lu,"
		"\"code_start\":%lu,\"code_len\":64,\"functions\":[{\"name\":\"victim\","
		"\"addr\":%lu,\"size\":16,\"new_addr\":%lu,\"saved\":\"%s\"}]}",
		id, nregions, (unsigned long)at, len + extra_len, code, addr, code, saved_field);
	put_prefix(at, (uint32_t)n);
	memcpy(at + 20, json, n);
	seal(at, len);
}

static uint64_t sum(void)
{
	uint64_t h = 1469598103934665603ULL;
	void *fns[] = { (void *)victim_b, (void *)victim_c, (void *)victim_e };
	for (int i = 0; i < 3; i++)
		for (int j = 0; j < 16; j++)
			h = (h ^ ((unsigned char *)fns[i])[j]) * 1099511628211ULL;
	for (int r = 0; r < nregions; r++)
		for (size_t j = 0; j < 2 * PAGE && j < regions[r].len; j++)
			h = (h ^ regions[r].at[j]) * 1099511628211ULL;
	return h;
}

int main(void)
{
	/* Below the executable (the heap grows above it), all within 2 GiB. */
	next_hint = (((unsigned long)&main) & ~((1UL << 20) - 1)) - (15UL << 27);

	unsigned char *a1 = map_near(PAGE, PAGE, "hotsplice:fourgib1");
	put_prefix(a1, 0xfffffff0u);
	seal(a1, PAGE);

	size_t big = (1UL << 30) + PAGE;
	unsigned char *a2 = map_near(big, PAGE, "hotsplice:onegib01");
	put_prefix(a2, 1u << 30);
	seal(a2, big);

	forge("forgedbb", (void *)victim_b, 0, "zz%.0s", 0);
	forge("forgedcc", (void *)victim_c, 0, "90%.0s", 0);
	forge("forgeddd", NULL, 0x1000, "0102030405%.0s", 0);
	forge("forgedee", (void *)victim_e, 0, "%s", 16UL << 20);

	printf("ready\n");
	fflush(stdout);
	for (;;) {
		printf("sum %016llx\n", (unsigned long long)sum());
		fflush(stdout);
		struct timespec ts = { 0, 100 * 1000 * 1000 };
		nanosleep(&ts, NULL);
	}
}
"#;

/// Builds and starts the hostile program as nobody.
fn start_hostile(dir: &TempDir) -> Target {
    let bin = compile_with(dir.path(), "hostile", HOSTILE_C, &["-O1"]);
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
        .arg(&bin);
    let mut p = Target::spawn(cmd, "hostile");
    p.expect_line(Stream::Stdout, 0, "ready", "hostile program started");
    let maps = fs::read_to_string(format!("/proc/{}/maps", p.pid())).expect("maps");
    let forged = maps
        .lines()
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f[1] == "r-xp" && f[4] == "0" && f.get(5).is_none_or(|n| n.starts_with("[anon:"))
        })
        .count();
    assert_eq!(forged, 6, "the hostile program's mappings:\n{maps}");
    let uid = fs::read_to_string(format!("/proc/{}/status", p.pid()))
        .expect("status")
        .lines()
        .find_map(|l| l.strip_prefix("Uid:").map(str::to_string))
        .expect("Uid line");
    assert!(
        uid.split_whitespace().all(|u| u == "65534"),
        "the hostile program must run as nobody, runs as {uid}"
    );
    p
}

/// The latest `sum X` the hostile program printed.
fn last_sum(p: &Target) -> String {
    let deadline = Instant::now() + LINE_TIMEOUT;
    loop {
        if let Some(l) = p
            .lines_since(Stream::Stdout, 0)
            .iter()
            .rev()
            .find(|l| l.starts_with("sum "))
        {
            return l.clone();
        }
        assert!(Instant::now() < deadline, "no sum line\n{}", p.describe());
        thread::sleep(Duration::from_millis(20));
    }
}

/// Alive, its code and forged mappings as they were: it prints `sum` again.
fn assert_untouched(p: &mut Target, sum: &str, what: &str) {
    p.assert_alive(what);
    p.expect_new_line(Stream::Stdout, sum, what);
}

/// A finished command and what it cost.
struct Measured {
    out: CmdOut,
    /// Peak resident memory of hotsplice, KiB.
    max_rss_kib: i64,
}

/// Runs `hotsplice ARGS...` and reads its peak memory use from the kernel
/// (`wait4`'s resource usage of that very child).
fn measured(args: &[&str]) -> Measured {
    let mut cmd = Command::new(hotsplice_bin());
    cmd.args(args)
        .current_dir(std::env::temp_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    test_env().apply_to(&mut cmd);
    let cmdline = format!("hotsplice {}", args.join(" "));
    let start = Instant::now();
    // Reaped by wait4 below, which also gives its resource usage.
    #[allow(clippy::zombie_processes)]
    let mut child = cmd.spawn().expect("start hotsplice");
    let pid = child.id() as libc::pid_t;
    let mut so = child.stdout.take().expect("stdout");
    let mut se = child.stderr.take().expect("stderr");
    let t_out = thread::spawn(move || {
        let mut s = String::new();
        let _ = so.read_to_string(&mut s);
        s
    });
    let t_err = thread::spawn(move || {
        let mut s = String::new();
        let _ = se.read_to_string(&mut s);
        s
    });
    let done = Arc::new(AtomicBool::new(false));
    let watchdog = {
        let done = done.clone();
        thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(120);
            while !done.load(Ordering::SeqCst) {
                if Instant::now() > deadline {
                    // SAFETY: plain kill(2) of our own unreaped child.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                    return;
                }
                thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 fills it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child, with valid out-pointers.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    done.store(true, Ordering::SeqCst);
    assert_eq!(r, pid, "wait4: {}", std::io::Error::last_os_error());
    let _ = watchdog.join();
    let elapsed = start.elapsed();
    use std::os::unix::process::ExitStatusExt;
    let out = CmdOut {
        cmdline,
        status: std::process::ExitStatus::from_raw(status),
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
        elapsed,
    };
    Measured {
        out,
        max_rss_kib: usage.ru_maxrss,
    }
}

/// Quick and small, whatever the records claim.
fn assert_cheap(m: &Measured, what: &str) {
    assert!(
        m.out.status.code().is_some(),
        "{what} died of a signal\n{}",
        m.out.describe()
    );
    assert!(
        m.out.elapsed < Duration::from_secs(10),
        "{what} took {:?}\n{}",
        m.out.elapsed,
        m.out.describe()
    );
    assert!(
        m.max_rss_kib < 256 * 1024,
        "{what} used {} MiB of memory\n{}",
        m.max_rss_kib / 1024,
        m.out.describe()
    );
}

/// A forged or corrupt record as `show --json` gives it: patch id, why.
type Shown = (Option<String>, String);

/// The `corrupt` entries `show --json` gives for `pid`, and the ids of its
/// patches.
fn shown_json(stdout: &str, pid: u32) -> Option<(Vec<Shown>, Vec<String>)> {
    let j = parse_json(stdout).unwrap_or_else(|e| panic!("show --json: {e}\n{stdout}"));
    let entry = j
        .as_array()
        .expect("an array")
        .iter()
        .find(|e| e.get("pid").and_then(Value::as_u64) == Some(u64::from(pid)))?;
    let corrupt = entry
        .get("corrupt")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
        .iter()
        .map(|c| {
            (
                c.get("patch_id")
                    .and_then(Value::as_str)
                    .map(str::to_string),
                c.get("why")
                    .and_then(Value::as_str)
                    .expect("a why")
                    .to_string(),
            )
        })
        .collect();
    let ids = entry
        .get("patches")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
        .iter()
        .filter_map(|p| p.get("id").and_then(Value::as_str).map(str::to_string))
        .collect();
    Some((corrupt, ids))
}

#[test]
fn forged_records_are_reported_and_never_acted_upon() {
    require_root();
    // A process with a real patch, which must still be listed.
    let case = Case::load("pie_exec");
    let build = case.build();
    let mut good = build.start(&case);
    good.expect_line(Stream::Stdout, 0, case.before(), "unpatched program");
    let out = temp_dir("hostile-patches");
    let files = create_patches(&case, &build, "fix.diff", out.path());
    apply(good.pid(), &[], &files).assert_ok("user apply");
    good.expect_new_line(Stream::Stdout, case.after(), "patched program");
    let good_id = shown_ids(good.pid())
        .pop()
        .expect("the real patch is shown");

    let dir = temp_dir("hostile");
    let mut hostile = start_hostile(&dir);
    let hpid = hostile.pid();
    let sum = last_sum(&hostile);

    // show --json, over every process.
    let m = measured(&["user", "show", "--json"]);
    assert_cheap(&m, "user show --json");
    assert!(m.out.success(), "user show --json\n{}", m.out.describe());
    let (corrupt, ids) = shown_json(&m.out.stdout, hpid)
        .unwrap_or_else(|| panic!("show --json leaves out pid {hpid}\n{}", m.out.describe()));
    assert!(ids.is_empty(), "forged records shown as patches: {ids:?}");
    let why_of = |id: &str| -> String {
        corrupt
            .iter()
            .find(|(i, _)| i.as_deref() == Some(id))
            .map(|(_, w)| w.clone())
            .unwrap_or_else(|| panic!("no corrupt entry for {id}: {corrupt:?}"))
    };
    assert!(why_of("forgedbb").contains("not hex"), "{corrupt:?}");
    assert!(why_of("forgedcc").contains("1 byte(s)"), "{corrupt:?}");
    assert!(
        why_of("forgeddd").contains("not inside an executable mapping"),
        "{corrupt:?}"
    );
    assert!(why_of("forgedee").contains("map_len"), "{corrupt:?}");
    for claim in ["4294967300 bytes", "1073741844 bytes"] {
        assert!(
            corrupt.iter().any(|(_, w)| w.contains(claim)),
            "no record refused for claiming {claim}: {corrupt:?}"
        );
    }
    assert_eq!(corrupt.len(), 6, "{corrupt:?}");
    let (_, good_ids) = shown_json(&m.out.stdout, good.pid()).expect("the patched process");
    assert_eq!(good_ids, vec![good_id.clone()]);

    // show, as text: one line per forged record, the other processes too.
    let m = measured(&["user", "show"]);
    assert_cheap(&m, "user show");
    assert!(m.out.success(), "user show\n{}", m.out.describe());
    let hostile_lines: Vec<&str> = m
        .out
        .stdout
        .lines()
        .filter(|l| l.split_whitespace().next() == Some(hpid.to_string().as_str()))
        .collect();
    assert_eq!(hostile_lines.len(), 6, "{}", m.out.describe());
    assert!(
        hostile_lines
            .iter()
            .all(|l| l.contains("forged or corrupt")),
        "{}",
        m.out.describe()
    );
    assert!(
        m.out.stdout.lines().any(|l| {
            let w = words(l);
            w.first() == Some(&good.pid().to_string().as_str()) && w.contains(&good_id.as_str())
        }),
        "show no longer lists pid {} with {good_id}\n{}",
        good.pid(),
        m.out.describe()
    );
    let h = hpid.to_string();
    let r = hotsplice(["user", "show", "--pid", h.as_str()]);
    r.assert_ok("user show --pid");
    assert_eq!(
        r.stdout.matches("forged or corrupt").count(),
        6,
        "{}",
        r.describe()
    );
    assert_untouched(&mut hostile, &sum, "after show");

    // remove and undo refuse, and leave the process as it was.
    let m = measured(&["user", "remove", "--all", "--pid", h.as_str()]);
    assert_cheap(&m, "user remove --all");
    m.out
        .assert_failed("user remove --all --pid (forged records)");
    assert_eq!(
        m.out.stderr.matches("forged or corrupt").count(),
        6,
        "{}",
        m.out.describe()
    );
    for id in ["forgedbb", "forgedcc", "forgeddd", "forgedee"] {
        assert!(m.out.stderr.contains(id), "{id}\n{}", m.out.describe());
    }
    assert_untouched(&mut hostile, &sum, "after remove --all");
    for id in ["forgedbb", "forgedcc", "forgeddd", "forgedee"] {
        let r = hotsplice(["user", "undo", "--pid", h.as_str(), id]);
        r.assert_failed(&format!("user undo {id}"));
        assert!(
            r.stderr.contains("forged or corrupt") && r.stderr.contains(id),
            "{}",
            r.describe()
        );
    }
    let r = hotsplice(["user", "remove", "--pid", h.as_str(), "forgedbb"]);
    r.assert_failed("user remove forgedbb");
    assert!(r.stderr.contains("forged or corrupt"), "{}", r.describe());
    assert_untouched(&mut hostile, &sum, "after undo");
    // Over the whole machine, a record someone forged in their own process
    // is a warning: it must not make root's removal fail.
    let r = hotsplice(["user", "remove", "forgedbb"]);
    r.assert_ok("machine-wide user remove forgedbb");
    assert!(
        r.stderr.contains("warning") && r.stderr.contains("forged or corrupt"),
        "{}",
        r.describe()
    );
    assert_untouched(&mut hostile, &sum, "after the machine-wide remove");

    // The real patch is unaffected, and still comes off.
    good.expect_new_line(Stream::Stdout, case.after(), "still patched");
    let g = good.pid().to_string();
    hotsplice(["user", "remove", "--all", "--pid", g.as_str()]).assert_ok("remove the real patch");
    good.expect_new_line(Stream::Stdout, case.before(), "unpatched again");
    assert_untouched(&mut hostile, &sum, "at the end");
}
