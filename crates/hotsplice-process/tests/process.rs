//! Real-process tests of seizing, the stop window, remote syscalls/calls and memory writes.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use hotsplice_process::*;

fn start_basic(dir: &tempfile::TempDir, threads: usize) -> (Target, u64, u64, i32) {
    let exe = compile(dir.path(), "target", TARGET_C);
    let mut t = Target::exe(&exe, &[&threads.to_string()]);
    let rl = t.wait_for(T, |l| l.starts_with("reader_tid="));
    let reader = field(&rl, "reader_tid") as i32;
    let ready = t.wait_for(T, |l| l.starts_with("ready"));
    (t, field(&ready, "add3"), field(&ready, "value"), reader)
}

#[test]
fn seize_stop_detach_single_thread_keeps_ticking() {
    let dir = tempfile::tempdir().unwrap();
    let exe = compile(dir.path(), "target", TARGET_C);
    let mut t = Target::exe(&exe, &["0"]);
    t.wait_for(T, |l| l.starts_with("ready"));
    let pid = t.pid_i32();
    let before = tick_no(&t.ticks(2, T));
    let mut tr = Tracee::seize(pid).unwrap();
    assert_eq!(tracer_pid(pid).unwrap(), Some(unsafe { libc::gettid() }));
    for _ in 0..10 {
        let w = tr.stop_all().unwrap();
        assert_eq!(w.threads().len(), 2);
        assert!(w.threads().iter().any(|s| s.tid == pid && s.regs.rip != 0));
        w.resume().unwrap();
        std::thread::sleep(Duration::from_millis(3));
    }
    let w = tr.stop_all().unwrap();
    w.detach_all().unwrap();
    assert!(matches!(tr.stop_all(), Err(Error::Detached { .. })));
    drop(tr);
    assert_eq!(tracer_pid(pid).unwrap(), None);
    let after = tick_no(&t.ticks(5, T));
    assert!(after >= before + 5);
    assert!(
        t.seen_containing("ERROR").is_empty(),
        "{:?}",
        t.seen_containing("ERROR")
    );
}

#[test]
fn remote_mmap_in_blocked_threads_and_syscall_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (mut t, _add3, _value, reader) = start_basic(&dir, 0);
    let pid = t.pid_i32();
    t.ticks(2, T);
    let mut tr = Tracee::seize(pid).unwrap();
    let prot = libc::PROT_READ | libc::PROT_WRITE;
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
    // Thread blocked in read() on a pipe.
    let a = tr
        .with_specific_thread(reader, |rt| {
            assert_eq!(rt.tid(), reader);
            assert_eq!(rt.regs().orig_rax, libc::SYS_read as u64);
            rt.mmap(0, 8192, prot, flags)
        })
        .unwrap();
    // Main thread blocked in nanosleep (the leader).
    let (b, named, fixed) = tr
        .with_thread(|rt| {
            assert_eq!(rt.tid(), pid);
            let b = rt.mmap(0, 4096, prot, flags)?;
            let named = rt.name_mapping(b, 4096, "hotsplice-test")?;
            // A free page 1 GiB below b (top-down mmap layout leaves room there).
            let hint = free_page_below(pid, b - 0x4000_0000);
            let fixed = rt.mmap(
                hint,
                4096,
                libc::PROT_READ,
                flags | libc::MAP_FIXED_NOREPLACE,
            )?;
            assert_eq!(fixed, hint);
            // Occupied: EEXIST.
            match rt.mmap(
                hint,
                4096,
                libc::PROT_READ,
                flags | libc::MAP_FIXED_NOREPLACE,
            ) {
                Err(Error::RemoteSyscallFailed { errno, .. }) => assert_eq!(errno, libc::EEXIST),
                other => panic!("expected EEXIST, got {other:?}"),
            }
            rt.mprotect(fixed, 4096, libc::PROT_READ | libc::PROT_WRITE)?;
            Ok((b, named, fixed))
        })
        .unwrap();
    let maps = read_maps(pid).unwrap();
    let ma = maps
        .iter()
        .find(|m| m.contains(a))
        .expect("mapping a present");
    assert!(ma.end - a >= 8192 && ma.read && ma.write && !ma.exec && ma.path.is_none());
    let mb = maps
        .iter()
        .find(|m| m.contains(b))
        .expect("mapping b present");
    if named {
        assert_eq!(mb.path.as_deref(), Some("[anon:hotsplice-test]"));
    }
    let mf = maps
        .iter()
        .find(|m| m.contains(fixed))
        .expect("fixed mapping present");
    assert!(mf.write);
    // The mapping is usable memory.
    let w = MemWriter::open(pid).unwrap();
    w.write(a, b"hello").unwrap();
    assert_eq!(read_memory(pid, a, 5).unwrap(), b"hello");
    tr.with_thread(|rt| rt.munmap(fixed, 4096)).unwrap();
    assert!(!read_maps(pid).unwrap().iter().any(|m| m.contains(fixed)));
    tr.detach().unwrap();
    // Blocked read() resumed correctly.
    t.send("ping\n");
    t.wait_for(T, |l| l == "echo ping");
    let n0 = tick_no(&t.ticks(1, T));
    let n1 = tick_no(&t.ticks(5, T));
    assert!(n1 >= n0 + 5);
    assert!(
        t.seen_containing("ERROR").is_empty(),
        "{:?}",
        t.seen_containing("ERROR")
    );
}

#[test]
fn remote_call_returns_value() {
    let dir = tempfile::tempdir().unwrap();
    let (mut t, add3, _value, reader) = start_basic(&dir, 2);
    let pid = t.pid_i32();
    let mut tr = Tracee::seize(pid).unwrap();
    let v = tr.with_thread(|rt| rt.call(add3, &[1, 2, 3])).unwrap();
    assert_eq!(v, 6);
    let v = tr
        .with_specific_thread(reader, |rt| rt.call(add3, &[40, 1, 1]))
        .unwrap();
    assert_eq!(v, 42);
    // A crashing call is an error and the target survives.
    let e = tr.with_thread(|rt| rt.call(0x10, &[])).unwrap_err();
    assert!(matches!(e, Error::Unexpected { .. }), "{e}");
    let v = tr
        .with_thread(|rt| rt.call(add3, &[u64::MAX, 0, 0]))
        .unwrap();
    assert_eq!(v, u64::MAX);
    drop(tr);
    t.send("after-call\n");
    t.wait_for(T, |l| l == "echo after-call");
    t.ticks(3, T);
    assert!(
        t.seen_containing("ERROR").is_empty(),
        "{:?}",
        t.seen_containing("ERROR")
    );
}

#[test]
fn memwriter_patches_readonly_text_in_window() {
    let dir = tempfile::tempdir().unwrap();
    let (mut t, _add3, value, _reader) = start_basic(&dir, 1);
    let pid = t.pid_i32();
    t.wait_for(T, |l| l.starts_with("tick ") && l.ends_with("value=7"));
    let text = read_maps(pid)
        .unwrap()
        .into_iter()
        .find(|m| m.contains(value))
        .unwrap();
    assert!(text.exec && !text.write, "{text:?}");
    let mut tr = Tracee::seize(pid).unwrap();
    let mut w = tr.stop_all().unwrap();
    // mov eax, 42 ; ret
    let code = [0xb8, 42, 0, 0, 0, 0xc3];
    w.mem().unwrap().write(value, &code).unwrap();
    let mut back = [0u8; 6];
    w.mem().unwrap().read(value, &mut back).unwrap();
    assert_eq!(back, code);
    w.detach_all().unwrap();
    t.wait_for(T, |l| l.starts_with("tick ") && l.ends_with("value=42"));
}

#[test]
fn fifty_threads_all_stop_and_resume() {
    let dir = tempfile::tempdir().unwrap();
    let (mut t, _add3, _value, _reader) = start_basic(&dir, 50);
    let pid = t.pid_i32();
    let mut tr = Tracee::seize(pid).unwrap();
    assert_eq!(tr.thread_count(), 52);
    for _ in 0..5 {
        let w = tr.stop_all().unwrap();
        let stopped: HashSet<i32> = w.threads().iter().map(|s| s.tid).collect();
        assert_eq!(stopped.len(), 52);
        let task: HashSet<i32> = thread_ids(pid).unwrap().into_iter().collect();
        assert_eq!(stopped, task);
        w.resume().unwrap();
    }
    tr.detach().unwrap();
    t.ticks(3, T);
    // Every thread runs (none left in tracing-stop 't').
    for tid in thread_ids(pid).unwrap() {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).unwrap();
        let state = stat[stat.rfind(')').unwrap() + 2..].chars().next().unwrap();
        assert!(state != 't' && state != 'T', "thread {tid} state {state}");
    }
}

#[test]
fn thread_churn_during_seize_and_stop() {
    let dir = tempfile::tempdir().unwrap();
    let exe = compile(dir.path(), "churn", CHURN_C);
    let mut t = Target::exe(&exe, &["4"]);
    t.wait_for(T, |l| l == "ready");
    let pid = t.pid_i32();
    t.ticks(2, T);
    let mut tr = Tracee::seize(pid).unwrap();
    let mut max_seen = 0;
    for _ in 0..20 {
        let w = tr.stop_all().unwrap();
        let stopped: HashSet<i32> = w.threads().iter().map(|s| s.tid).collect();
        assert_eq!(stopped.len(), w.threads().len(), "duplicate tids");
        let task = thread_ids(pid).unwrap();
        for tid in &task {
            assert!(
                stopped.contains(tid),
                "thread {tid} in /proc/{pid}/task is not in the stopped set {stopped:?}"
            );
        }
        max_seen = max_seen.max(stopped.len());
        w.resume().unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(max_seen >= 5);
    let c0 = field(&t.ticks(1, T), "created");
    tr.service_events().unwrap();
    let w = tr.stop_all().unwrap();
    w.detach_all().unwrap();
    drop(tr);
    let c1 = field(&t.ticks(5, T), "created");
    assert!(c1 > c0, "target stopped creating threads: {c0} -> {c1}");
    assert_eq!(tracer_pid(pid).unwrap(), None);
}

#[test]
fn signals_during_windows_are_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let exe = compile(dir.path(), "signals", SIGNALS_C);
    let mut t = Target::exe(&exe, &[]);
    t.wait_for(T, |l| l == "ready");
    let pid = t.pid_i32();
    let h0 = field(&t.ticks(2, T), "handled");
    let mut tr = Tracee::seize(pid).unwrap();
    for i in 0..50 {
        let w = tr.stop_all().unwrap();
        assert_eq!(w.threads().len(), 3);
        w.resume().unwrap();
        if i % 10 == 0 {
            tr.with_thread(|rt| rt.syscall(libc::SYS_getpid, &[]))
                .unwrap();
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    tr.detach().unwrap();
    t.ticks(2, T);
    let h1 = field(&t.ticks(1, T), "handled");
    let h2 = field(&t.ticks(5, T), "handled");
    assert!(h1 > h0 && h2 > h1, "signals not handled: {h0} {h1} {h2}");
}

#[test]
fn getpid_via_remote_syscall() {
    let dir = tempfile::tempdir().unwrap();
    let (mut t, _, _, _) = start_basic(&dir, 0);
    let pid = t.pid_i32();
    let mut tr = Tracee::seize(pid).unwrap();
    let r = tr
        .with_thread(|rt| rt.syscall(libc::SYS_getpid, &[]))
        .unwrap();
    assert_eq!(r as i32, pid);
    let e = tr
        .with_thread(|rt| rt.syscall(libc::SYS_close, &[999_999]))
        .unwrap_err();
    assert!(
        matches!(e, Error::RemoteSyscallFailed { errno, .. } if errno == libc::EBADF),
        "{e}"
    );
    drop(tr);
    t.ticks(3, T);
}

#[test]
fn error_no_such_process() {
    let e = Tracee::seize(0x7fff_fff0).unwrap_err();
    assert!(
        matches!(e, Error::NoSuchProcess { pid: 0x7fff_fff0 }),
        "{e}"
    );
    assert!(e.to_string().contains("2147483632"));
    assert!(matches!(
        read_maps(0x7fff_fff0),
        Err(Error::NoSuchProcess { .. })
    ));
    assert!(matches!(
        read_memory(0x7fff_fff0, 0x1000, 4),
        Err(Error::NoSuchProcess { .. })
    ));
}

#[test]
fn error_already_traced_names_tracer() {
    let dir = tempfile::tempdir().unwrap();
    let (t, _, _, _) = start_basic(&dir, 0);
    let tracer_exe = compile(dir.path(), "mytracer", TRACER_C);
    let mut tracer = Target::exe(&tracer_exe, &[&t.pid_i32().to_string()]);
    tracer.wait_for(T, |l| l == "seized");
    let e = Tracee::seize(t.pid_i32()).unwrap_err();
    match &e {
        Error::AlreadyTraced {
            pid,
            tracer_pid,
            tracer_name,
        } => {
            assert_eq!(*pid, t.pid_i32());
            assert_eq!(*tracer_pid, tracer.pid_i32());
            assert_eq!(tracer_name.as_deref(), Some("mytracer"));
        }
        other => panic!("expected AlreadyTraced, got {other:?}"),
    }
    let msg = e.to_string();
    assert!(
        msg.contains("mytracer") && msg.contains(&tracer.pid_i32().to_string()),
        "{msg}"
    );
    drop(tracer);
    drop(t);
}

#[test]
fn process_killed_during_window_does_not_hang() {
    let dir = tempfile::tempdir().unwrap();
    let (mut t, _, _, _) = start_basic(&dir, 5);
    let pid = t.pid_i32();
    let mut tr = Tracee::seize(pid).unwrap();
    let w = tr.stop_all().unwrap();
    t.kill().unwrap();
    let r = w.resume();
    assert!(
        r.is_ok() || matches!(r, Err(Error::ProcessExited { .. })),
        "{r:?}"
    );
    let r = tr.stop_all().map(|_| ());
    assert!(
        matches!(
            r,
            Err(Error::ProcessExited { .. }) | Err(Error::Detached { .. })
        ),
        "{r:?}"
    );
    drop(tr);
    // Nothing hangs; the process is gone (we are both its parent and its tracer, so the tracer's
    // waitpid may already have reaped it).
    match t.wait() {
        Ok(st) => assert!(!st.success()),
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::ECHILD)),
    }
}

#[test]
fn process_exiting_during_stop_loop_gives_process_exited() {
    let dir = tempfile::tempdir().unwrap();
    let exe = compile(dir.path(), "churn", CHURN_C);
    for exit_ms in [30, 60] {
        let mut t = Target::exe(&exe, &["3", &exit_ms.to_string()]);
        t.wait_for(T, |l| l == "ready");
        let pid = t.pid_i32();
        let mut tr = match Tracee::seize(pid) {
            Ok(tr) => tr,
            Err(Error::ProcessExited { .. } | Error::NoSuchProcess { .. }) => continue,
            Err(e) => panic!("{e}"),
        };
        let mut n = 0;
        let err = loop {
            match tr.stop_all() {
                Ok(w) => {
                    if let Err(e) = w.resume() {
                        break Some(e);
                    }
                }
                // A thread exiting may be in state D for a moment: no window, try again.
                Err(Error::Uninterruptible { .. }) => {}
                Err(e) => break Some(e),
            }
            if let Err(e) = tr.service_events() {
                break Some(e);
            }
            std::thread::sleep(Duration::from_millis(1));
            n += 1;
            if n > 5000 {
                break None;
            }
        };
        // Either we observed the exit, or /proc says it is gone; both must not hang.
        if let Some(e) = &err {
            assert!(matches!(e, Error::ProcessExited { .. }), "{e}");
        }
        assert!(err.is_some(), "exit never observed");
        drop(tr);
        reaped_or_success(&mut t);
    }
}

#[test]
fn dropping_window_resumes_target() {
    let dir = tempfile::tempdir().unwrap();
    let (mut t, _, _, _) = start_basic(&dir, 3);
    let pid = t.pid_i32();
    let mut tr = Tracee::seize(pid).unwrap();
    {
        let w = tr.stop_all().unwrap();
        assert_eq!(w.threads().len(), 5);
        // dropped without resume
    }
    t.drain();
    let n0 = tick_no(&t.ticks(1, T));
    let n1 = tick_no(&t.ticks(3, T));
    assert!(n1 > n0);
    // Also on panic.
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _w = tr.stop_all().unwrap();
        panic!("engine bug");
    }));
    assert!(r.is_err());
    t.drain();
    t.ticks(3, T);
    drop(tr);
    assert_eq!(tracer_pid(pid).unwrap(), None);
    t.ticks(2, T);
}

/// We are the target's parent and its tracer: the tracer's waitpid may reap the exit itself.
fn reaped_or_success(t: &mut Target) {
    match t.wait() {
        Ok(st) => assert!(st.success(), "{st:?}"),
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::ECHILD)),
    }
}

/// First page at or below `addr` not covered by any mapping of `pid`.
fn free_page_below(pid: i32, addr: u64) -> u64 {
    let maps = read_maps(pid).unwrap();
    let mut a = addr & !0xfff;
    while let Some(m) = maps.iter().find(|m| m.contains(a) || m.contains(a + 0xfff)) {
        a = (m.start - 0x1000) & !0xfff;
    }
    a
}

/// A thread spinning on a CPU, created before three idle ones, and a main
/// thread asleep: every window interrupts the idle threads first and the
/// spinner after them (so it only sees the window's tail), and says how
/// long the running threads stayed stopped; a process whose threads all
/// sleep has none.
const SPIN_FIRST_C: &str = r#"
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

static volatile unsigned long spins;
static volatile int spin = 1;

static void *spinner(void *a) {
    (void)a;
    printf("spinner_tid=%ld\n", (long)syscall(SYS_gettid));
    fflush(stdout);
    for (;;)
        if (spin)
            spins++;
        else
            pause();
    return 0;
}

static void *idle(void *a) { (void)a; for (;;) pause(); return 0; }

int main(int argc, char **argv) {
    pthread_t t;
    spin = !(argc > 1 && strcmp(argv[1], "sleep") == 0);
    pthread_create(&t, 0, spinner, 0);
    usleep(10000);
    for (int i = 0; i < 3; i++)
        pthread_create(&t, 0, idle, 0);
    usleep(20000);
    printf("ready\n");
    fflush(stdout);
    for (unsigned long n = 0;; n++) {
        usleep(spin ? 10000 : 200000);
        printf("tick %lu spins=%lu\n", n, spins);
        fflush(stdout);
    }
}
"#;

/// The scheduler state letter of thread `tid` of `pid`.
fn state_of(pid: i32, tid: i32) -> char {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).unwrap();
    stat[stat.rfind(')').unwrap() + 2..].chars().next().unwrap()
}

#[test]
fn running_threads_are_stopped_last_and_let_go_first() {
    let dir = tempfile::tempdir().unwrap();
    let exe = compile(dir.path(), "spin_first", SPIN_FIRST_C);
    let mut t = Target::exe(&exe, &[]);
    let spinner = field(
        &t.wait_for(T, |l| l.starts_with("spinner_tid=")),
        "spinner_tid",
    ) as i32;
    t.wait_for(T, |l| l.starts_with("ready"));
    let pid = t.pid_i32();
    let mut tr = Tracee::seize(pid).unwrap();
    assert_eq!(tr.thread_count(), 5);
    for round in 0..10 {
        // Threads just let go are runnable until they are back in pause():
        // wait until the idle ones sleep again (they wake for nothing).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while thread_ids(pid)
            .unwrap()
            .into_iter()
            .any(|x| x != spinner && x != pid && state_of(pid, x) != 'S')
        {
            assert!(
                std::time::Instant::now() < deadline,
                "idle threads do not sleep"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        let w = tr.stop_all().unwrap();
        let order: Vec<i32> = w.threads().iter().map(|s| s.tid).collect();
        assert_eq!(order.len(), 5);
        let at = order.iter().position(|&x| x == spinner).unwrap();
        // Every idle thread (the main thread is always collected last)
        // was stopped before the spinner, although it is older.
        assert!(
            order
                .iter()
                .enumerate()
                .all(|(i, &x)| i < at || x == spinner || x == pid),
            "round {round}: spinner {spinner} stopped before an idle thread: {order:?}"
        );
        w.resume().unwrap();
        assert!(
            tr.last_running_stop().is_some(),
            "round {round}: the spinner's stop is not reported"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    tr.detach().unwrap();
    t.ticks(3, T);

    // Every thread asleep: no running thread's stop to report.
    let mut s = Target::exe(&exe, &["sleep"]);
    s.wait_for(T, |l| l.starts_with("ready"));
    let spid = s.pid_i32();
    let mut tr = Tracee::seize(spid).unwrap();
    // Just after a tick (the main thread then sleeps 200 ms), once every
    // thread sleeps.
    s.ticks(1, T);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while thread_ids(spid)
        .unwrap()
        .into_iter()
        .any(|x| state_of(spid, x) != 'S')
    {
        assert!(std::time::Instant::now() < deadline, "threads do not sleep");
        std::thread::sleep(Duration::from_millis(1));
    }
    let w = tr.stop_all().unwrap();
    w.resume().unwrap();
    assert_eq!(tr.last_running_stop(), None, "no thread was running");
    tr.detach().unwrap();
    s.ticks(3, T);
}

/// Sleepers of every common kind: nanosleep (restarted through
/// `restart_syscall`), poll with a timeout, condition variables (futex),
/// read on a pipe, and the main thread reading stdin. Each checks what its
/// call returned and how long it took, and counts its wakes in `wakes`.
const SLEEPERS_C: &str = r#"
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static atomic_long wakes;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int fds[2];

static long now_ns(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1000000000L + t.tv_nsec;
}

static void *napper(void *arg)
{
	(void)arg;
	for (;;) {
		struct timespec d = { 0, 50000000 };
		long t0 = now_ns();
		int r = nanosleep(&d, NULL);
		if (r != 0)
			printf("ERROR nanosleep returned %d errno %d\n", r, errno);
		else if (now_ns() - t0 < 50000000)
			printf("ERROR nanosleep returned early\n");
		atomic_fetch_add(&wakes, 1);
	}
	return NULL;
}

static void *poller(void *arg)
{
	(void)arg;
	for (;;) {
		long t0 = now_ns();
		int r = poll(NULL, 0, 60);
		if (r != 0)
			printf("ERROR poll returned %d errno %d\n", r, errno);
		else if (now_ns() - t0 < 60000000)
			printf("ERROR poll returned early\n");
		atomic_fetch_add(&wakes, 1);
	}
	return NULL;
}

static void *waiter(void *arg)
{
	(void)arg;
	pthread_mutex_lock(&mu);
	for (;;)
		pthread_cond_wait(&cv, &mu);
	return NULL;
}

static void *reader(void *arg)
{
	char c;
	(void)arg;
	for (;;) {
		ssize_t n = read(fds[0], &c, 1);
		if (n != 1)
			printf("ERROR read returned %zd errno %d\n", n, errno);
		atomic_fetch_add(&wakes, 1);
	}
	return NULL;
}

int main(int argc, char **argv)
{
	int n = argc > 1 ? atoi(argv[1]) : 10;
	char line[64];
	pthread_t t;

	setvbuf(stdout, NULL, _IOLBF, 0);
	if (pipe(fds))
		return 1;
	for (int i = 0; i < n; i++) {
		void *(*f)(void *) = i % 4 == 0 ? napper : i % 4 == 1 ? poller : i % 4 == 2 ? waiter : reader;
		if (pthread_create(&t, NULL, f, NULL))
			return 1;
	}
	printf("ready wakes=%p\n", (void *)&wakes);
	while (fgets(line, sizeof(line), stdin)) {
		if (line[0] == 'w') {
			/* One byte for a reader. */
			if (write(fds[1], "x", 1) != 1)
				printf("ERROR write\n");
			printf("wrote\n");
		} else if (line[0] == 'q') {
			break;
		}
	}
	return 0;
}
"#;

fn wakes(pid: i32, at: u64) -> u64 {
    let b = read_memory(pid, at, 8).unwrap();
    u64::from_le_bytes(b.try_into().unwrap())
}

/// Sleeping threads parked in their system calls by the window
/// (`stop_all_then` with `early` saying yes): none is in `threads()`, none
/// runs a user instruction while the window is open although their sleeps
/// end, and once let go (resumed, then detached) every call returns what
/// and when it should (no EINTR, no early return, the reader gets its byte).
#[test]
fn parked_sleepers_run_no_user_code_in_the_window_and_their_calls_return_unharmed() {
    let dir = tempfile::tempdir().unwrap();
    let exe = compile(dir.path(), "sleepers", SLEEPERS_C);
    // 80 sleeping threads and main: three batches.
    let mut t = Target::exe(&exe, &["80"]);
    let ready = t.wait_for(T, |l| l.starts_with("ready"));
    let at = field(&ready, "wakes");
    let pid = t.pid_i32();
    std::thread::sleep(Duration::from_millis(20));
    let mut tr = Tracee::seize(pid).unwrap();
    let mut full = 0;
    for round in 0..3 {
        let mut batches = Vec::new();
        let w = tr
            .stop_all_then(&mut |b| {
                batches.push(b.len());
                true
            })
            .unwrap();
        let park = w.park();
        // Unless parked threads woke during the window
        // (a very slow machine), it parks batch by batch.
        if !park.gave_up {
            full += 1;
            assert!(
                // (The main thread joins the batch open when its stop came.)
                batches.len() >= 3 && batches.iter().all(|&n| n <= PARK_BATCH + 1),
                "batches {batches:?}"
            );
            // Nearly all sleep (a napper may be on its way between two
            // calls; one whose call ended meanwhile was let go and stopped
            // again).
            assert!(
                park.parked >= 60,
                "round {round}: parked {park:?}, stopped {:?}",
                w.threads()
            );
        }
        assert_eq!(
            w.parked_threads().len() + park.woke,
            park.parked,
            "{park:?}"
        );
        assert!(w
            .parked_threads()
            .iter()
            .all(|p| !w.threads().iter().any(|s| s.tid == p.tid)));
        assert_eq!(w.threads().len() + w.parked_threads().len(), 81);
        let before = wakes(pid, at);
        // Every napper's and poller's sleep ends meanwhile: each waits in
        // its syscall-exit stop, running nothing.
        std::thread::sleep(Duration::from_millis(120));
        assert_eq!(
            wakes(pid, at),
            before,
            "round {round}: a thread ran while the window was open"
        );
        w.resume().unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert!(wakes(pid, at) > before, "round {round}: nothing ran after");
    }
    assert!(full > 0, "parking gave up in every window");
    let w = tr.stop_all_then(&mut |_| true).unwrap();
    w.detach_all().unwrap();
    drop(tr);
    assert_eq!(tracer_pid(pid).unwrap(), None);
    let before = wakes(pid, at);
    std::thread::sleep(Duration::from_millis(200));
    assert!(wakes(pid, at) > before + 20);
    // The main thread's read of stdin and a reader's read of the pipe were
    // parked: both still work.
    let a = t.ask("w", T).unwrap();
    assert_eq!(a, "wrote");
    std::thread::sleep(Duration::from_millis(20));
    for p in tracer_threads_of(pid) {
        assert_ne!(p, 't', "a thread is left in a tracing stop");
    }
    assert!(
        t.seen_containing("ERROR").is_empty(),
        "{:?}",
        t.seen_containing("ERROR")
    );
}

/// The states of `pid`'s threads (`t` is a tracing stop).
fn tracer_threads_of(pid: i32) -> Vec<char> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|e| {
            let s = std::fs::read_to_string(e.ok()?.path().join("stat")).ok()?;
            s.rsplit(')')
                .next()?
                .split_whitespace()
                .next()?
                .chars()
                .next()
        })
        .collect()
}

/// The main thread parked in `sigsuspend` inside a signal handler (the
/// call that swaps the signal mask for its sleep and puts it back after):
/// windows that park it, then a detach, leave its mask right: the signal it
/// waits for still ends the wait.
const SIGSUSPEND_C: &str = r#"
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static volatile sig_atomic_t released;

static void on_usr2(int s) { (void)s; released = 1; }

static void on_usr1(int s)
{
	sigset_t wait;
	(void)s;
	sigfillset(&wait);
	sigdelset(&wait, SIGUSR2);
	printf("parked\n");
	while (!released)
		sigsuspend(&wait);
	printf("handler returned\n");
}

static void *worker(void *a)
{
	(void)a;
	for (;;)
		usleep(1000);
	return NULL;
}

int main(void)
{
	struct sigaction sa;
	sigset_t both;
	pthread_t t;

	setvbuf(stdout, NULL, _IOLBF, 0);
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_usr2;
	sigaction(SIGUSR2, &sa, NULL);
	sa.sa_handler = on_usr1;
	/* SIGUSR2 only inside sigsuspend (no lost wake-up). */
	sigaddset(&sa.sa_mask, SIGUSR2);
	sigaction(SIGUSR1, &sa, NULL);
	sigemptyset(&both);
	sigaddset(&both, SIGUSR1);
	sigaddset(&both, SIGUSR2);
	pthread_sigmask(SIG_BLOCK, &both, NULL);
	for (int i = 0; i < 3; i++)
		pthread_create(&t, NULL, worker, NULL);
	pthread_sigmask(SIG_UNBLOCK, &both, NULL);
	raise(SIGUSR1);
	for (;;)
		pause();
}
"#;

#[test]
fn a_main_thread_parked_in_sigsuspend_keeps_its_signal_mask() {
    let dir = tempfile::tempdir().unwrap();
    let exe = compile(dir.path(), "sigsuspend", SIGSUSPEND_C);
    for run in 0..50 {
        let mut t = Target::exe(&exe, &[]);
        t.wait_for(T, |l| l.starts_with("parked"));
        let pid = t.pid_i32();
        let mut tr = Tracee::seize(pid).unwrap();
        for _ in 0..3 {
            let w = tr.stop_all_then(&mut |_| true).unwrap();
            w.resume().unwrap();
        }
        let w = tr.stop_all_then(&mut |_| true).unwrap();
        w.detach_all().unwrap();
        drop(tr);
        unsafe { libc::kill(pid, libc::SIGUSR2) };
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let ok = t
            .wait_match(hotsplice_testsupport::Stream::Stdout, 0, T, |l| {
                l.starts_with("handler returned")
            })
            .is_some();
        assert!(ok, "run {run}: the handler never returned; {status}");
    }
}
