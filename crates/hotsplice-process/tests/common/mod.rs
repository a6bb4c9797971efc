//! The C programs of the process tests, and reading their output (the
//! machinery to compile, start and watch them is `hotsplice-testsupport`).
#![allow(dead_code)]

pub use hotsplice_testsupport::{compile, Target};
use std::time::Duration;

pub const TARGET_C: &str = r#"
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

__attribute__((noinline, used)) long add3(long a, long b, long c) { return a + b + c; }
__attribute__((noinline, used, aligned(16))) int value(void) { __asm__ volatile(""); return 7; }
int (*volatile value_ptr)(void) = value;

static void *idle(void *a) { (void)a; for (;;) pause(); return 0; }

static void *reader(void *a) {
    (void)a;
    char buf[256];
    printf("reader_tid=%ld\n", (long)syscall(SYS_gettid));
    fflush(stdout);
    for (;;) {
        ssize_t n = read(0, buf, sizeof buf - 1);
        if (n < 0) { printf("READ-ERROR errno=%d\n", errno); fflush(stdout); continue; }
        if (n == 0) break;
        buf[n] = 0;
        printf("echo %s", buf);
        fflush(stdout);
    }
    return 0;
}

int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 0;
    pthread_attr_t at;
    pthread_attr_init(&at);
    pthread_attr_setstacksize(&at, 64 * 1024);
    for (int i = 0; i < n; i++) {
        pthread_t t;
        if (pthread_create(&t, &at, idle, 0)) { perror("pthread_create"); return 1; }
    }
    pthread_t r;
    pthread_create(&r, &at, reader, 0);
    usleep(20000);
    printf("ready pid=%d add3=%p value=%p\n", getpid(), (void *)add3, (void *)value);
    fflush(stdout);
    for (long tick = 0;; tick++) {
        struct timespec ts = {0, 10 * 1000 * 1000};
        if (nanosleep(&ts, 0) != 0) { printf("NANOSLEEP-ERROR errno=%d\n", errno); }
        printf("tick %ld value=%d\n", tick, value_ptr());
        fflush(stdout);
    }
}
"#;

pub const CHURN_C: &str = r#"
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static volatile long created;
static void *child(void *a) { (void)a; __sync_fetch_and_add(&created, 1); return 0; }
static void *churn(void *a) {
    (void)a;
    pthread_attr_t at;
    pthread_attr_init(&at);
    pthread_attr_setstacksize(&at, 64 * 1024);
    for (;;) {
        pthread_t t;
        if (pthread_create(&t, &at, child, 0) == 0) pthread_join(t, 0);
    }
    return 0;
}
int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 4;
    int exit_after_ms = argc > 2 ? atoi(argv[2]) : 0;
    for (int i = 0; i < n; i++) { pthread_t t; pthread_create(&t, 0, churn, 0); }
    printf("ready\n");
    fflush(stdout);
    for (long tick = 0;; tick++) {
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, 0);
        printf("tick %ld created=%ld\n", tick, created);
        fflush(stdout);
        if (exit_after_ms && tick * 10 >= exit_after_ms) exit(0);
    }
}
"#;

pub const SIGNALS_C: &str = r#"
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static volatile long handled;
static volatile pid_t victim;
static void on_usr1(int s) { (void)s; __sync_fetch_and_add(&handled, 1); }
static void *sleeper(void *a) { (void)a; victim = syscall(SYS_gettid); for (;;) pause(); return 0; }
static void *sender(void *a) {
    (void)a;
    for (;;) {
        if (victim) syscall(SYS_tgkill, getpid(), victim, SIGUSR1);
        struct timespec ts = {0, 100 * 1000};
        nanosleep(&ts, 0);
    }
    return 0;
}
int main(void) {
    struct sigaction sa = {0};
    sa.sa_handler = on_usr1;
    sa.sa_flags = SA_RESTART;
    sigaction(SIGUSR1, &sa, 0);
    pthread_t t;
    pthread_create(&t, 0, sleeper, 0);
    pthread_create(&t, 0, sender, 0);
    printf("ready\n");
    fflush(stdout);
    for (long tick = 0;; tick++) {
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, 0);
        printf("tick %ld handled=%ld\n", tick, handled);
        fflush(stdout);
    }
}
"#;

pub const TRACER_C: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <sys/ptrace.h>
#include <unistd.h>
int main(int argc, char **argv) {
    int pid = atoi(argv[1]);
    if (ptrace(PTRACE_SEIZE, pid, 0, 0) != 0) { perror("seize"); return 1; }
    printf("seized\n");
    fflush(stdout);
    for (;;) pause();
}
"#;

/// Waits until `n` more "tick" lines arrived; returns the last one.
pub trait Ticks {
    fn ticks(&mut self, n: usize, timeout: Duration) -> String;
}

impl Ticks for Target {
    fn ticks(&mut self, n: usize, timeout: Duration) -> String {
        let mut last = String::new();
        for _ in 0..n {
            last = self.wait_for(timeout, |l| l.starts_with("tick "));
        }
        last
    }
}

/// Parse `key=0x...` or `key=123` from a line.
pub fn field(line: &str, key: &str) -> u64 {
    let v = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"));
    match v.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).unwrap(),
        None => v.parse().unwrap(),
    }
}

pub fn tick_no(line: &str) -> u64 {
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

pub const T: Duration = Duration::from_secs(10);
