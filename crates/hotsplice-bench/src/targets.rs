//! The C targets the benchmarks patch: their sources, the one-line fix for
//! each, and how they are built (with `make`) and turned into a patch file
//! (with `hotsplice create`).

use anyhow::{bail, ensure, Context, Result};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Shared by all targets: two objects, `-O2`, like a real build.
const MAKEFILE: &str = "\
CC ?= cc
CFLAGS = -g -O2

all: prog

prog: main.o work.o
\t$(CC) $(CFLAGS) -pthread -o $@ main.o work.o

main.o: main.c work.h
\t$(CC) $(CFLAGS) -pthread -c -o $@ main.c

work.o: work.c work.h
\t$(CC) $(CFLAGS) -pthread -c -o $@ work.c

clean:
\trm -f prog *.o

.PHONY: all clean
";

/// One C program and the fix the benchmarks apply to it.
pub struct Program {
    pub name: &'static str,
    main_c: &'static str,
    work_c: &'static str,
    work_h: &'static str,
    /// The line of work.c the fix replaces, and its replacement.
    old_line: &'static str,
    new_line: &'static str,
}

/// Stop-time target: `prog N` runs N threads (main included). One spins on
/// clock_gettime(CLOCK_MONOTONIC) and keeps the largest gap between two
/// readings, calling compute() every 1024 readings; N-2 block in
/// pthread_cond_wait; main blocks reading commands on stdin:
/// `r` resets the max gap (answers `ok` once the spinner has done it),
/// `g` answers `<max gap ns> <last compute() result> <pauses> <paused ns>`
/// (pauses: gaps of 50 µs or more, and their sum) once the spinner has
/// gone round at least 2048 more times (so the gap of a stop that just
/// ended, and a compute() call after it, are included).
pub const STOPPER: Program = Program {
    name: "stopper",
    main_c: r#"#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "work.h"

/* Gaps at least this long count as pauses. */
#define PAUSE_NS 50000L

volatile int input = 7;

static _Alignas(64) atomic_long max_gap;
static _Alignas(64) atomic_ulong spins;
static _Alignas(64) atomic_int reset_req;
static _Alignas(64) atomic_int reset_ack;
static _Alignas(64) atomic_int result;
static atomic_long pauses, paused_ns;

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;

static long now_ns(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1000000000L + t.tv_nsec;
}

static void *spinner(void *arg)
{
	long last = now_ns(), max = 0;
	unsigned long n = 0;
	int seen = 0;
	int cpu = *(int *)arg;

	if (cpu >= 0) {
		cpu_set_t set;

		CPU_ZERO(&set);
		CPU_SET(cpu, &set);
		if (sched_setaffinity(0, sizeof(set), &set))
			perror("sched_setaffinity");
	}
	for (;;) {
		long t = now_ns();
		int r;

		if (t - last > max) {
			max = t - last;
			atomic_store_explicit(&max_gap, max, memory_order_relaxed);
		}
		if (t - last >= PAUSE_NS) {
			atomic_fetch_add_explicit(&pauses, 1, memory_order_relaxed);
			atomic_fetch_add_explicit(&paused_ns, t - last, memory_order_relaxed);
		}
		last = t;
		r = atomic_load_explicit(&reset_req, memory_order_acquire);
		if (r != seen) {
			seen = r;
			max = 0;
			atomic_store_explicit(&max_gap, 0, memory_order_relaxed);
			atomic_store_explicit(&pauses, 0, memory_order_relaxed);
			atomic_store_explicit(&paused_ns, 0, memory_order_relaxed);
			last = now_ns();
			atomic_store_explicit(&reset_ack, r, memory_order_release);
		}
		if ((++n & 1023) == 0)
			atomic_store_explicit(&result, compute(input), memory_order_relaxed);
		atomic_store_explicit(&spins, n, memory_order_release);
	}
	return NULL;
}

static void *idler(void *arg)
{
	(void)arg;
	pthread_mutex_lock(&mu);
	for (;;)
		pthread_cond_wait(&cv, &mu);
	return NULL;
}

int main(int argc, char **argv)
{
	int n = argc > 1 ? atoi(argv[1]) : 2;
	int spin_cpu = argc > 2 ? atoi(argv[2]) : -1;
	char line[64];
	pthread_t t;

	setvbuf(stdout, NULL, _IOLBF, 0);
	if (spin_cpu >= 0) {
		/* Everything but the spinner stays off its CPU. */
		cpu_set_t set;

		sched_getaffinity(0, sizeof(set), &set);
		CPU_CLR(spin_cpu, &set);
		if (sched_setaffinity(0, sizeof(set), &set))
			perror("sched_setaffinity");
	}
	/* Idle threads first: the engine stops and resumes threads in thread
	 * id order, so the spinner, created last, is resumed last. */
	for (int i = 2; i < n; i++) {
		if (pthread_create(&t, NULL, idler, NULL)) {
			perror("pthread_create");
			return 1;
		}
	}
	if (pthread_create(&t, NULL, spinner, &spin_cpu)) {
		perror("pthread_create");
		return 1;
	}
	printf("ready %d\n", n);
	while (fgets(line, sizeof(line), stdin)) {
		if (line[0] == 'r') {
			int r = atomic_load(&reset_req) + 1;

			atomic_store(&reset_req, r);
			while (atomic_load(&reset_ack) != r)
				sched_yield();
			printf("ok\n");
		} else if (line[0] == 'g') {
			unsigned long s0 = atomic_load(&spins);

			while (atomic_load(&spins) - s0 < 2048)
				sched_yield();
			printf("%ld %d %ld %ld\n", atomic_load(&max_gap), atomic_load(&result),
			       atomic_load(&pauses), atomic_load(&paused_ns));
		} else if (line[0] == 'q') {
			break;
		}
	}
	return 0;
}
"#,
    work_c: r#"#include "work.h"

/* Called by the spinner thread every 1024 clock readings. */
int compute(int n)
{
	int s = 0;

	for (int i = 0; i < n; i++)
		s += 3 * i;
	return s + 1;		/* version 1 */
}
"#,
    work_h: "#ifndef WORK_H\n#define WORK_H\nint compute(int n);\n#endif\n",
    old_line: "\treturn s + 1;\t\t/* version 1 */",
    new_line: "\treturn s + 2;\t\t/* version 2 */",
};

/// compute(7) before and after the fix.
pub const STOPPER_BEFORE: i64 = 64;
pub const STOPPER_AFTER: i64 = 65;

/// Many-process target: `prog FILE INDEX` maps FILE (shared) and stores
/// answer(input) into the INDEX-th int of it, every 20 ms. Single-threaded.
/// (Shared memory rather than a file per process: 200 processes renaming
/// files at once spend their time blocked in the file system.)
pub const FLIPPER: Program = Program {
    name: "flipper",
    main_c: r#"#include <fcntl.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
#include "work.h"

volatile int input = 4;

int main(int argc, char **argv)
{
	struct timespec nap = { 0, 20 * 1000 * 1000 };
	volatile int *slots;
	long index;
	int fd;

	if (argc < 3)
		return 2;
	index = atol(argv[2]);
	fd = open(argv[1], O_RDWR);
	if (fd < 0)
		return 1;
	slots = mmap(NULL, (index + 1) * sizeof(int), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (slots == MAP_FAILED)
		return 1;
	close(fd);
	for (;;) {
		slots[index] = answer(input);
		if (getppid() == 1)
			return 0;
		nanosleep(&nap, NULL);
	}
}
"#,
    work_c: r#"#include "work.h"

int answer(int n)
{
	return n * 10 + 1;	/* version 1 */
}
"#,
    work_h: "#ifndef WORK_H\n#define WORK_H\nint answer(int n);\n#endif\n",
    old_line: "\treturn n * 10 + 1;\t/* version 1 */",
    new_line: "\treturn n * 10 + 2;\t/* version 2 */",
};

pub const FLIPPER_BEFORE: i32 = 41;
pub const FLIPPER_AFTER: i32 = 42;

/// Call-cost target: on `m ITERS` it calls work(arg) ITERS times in a tight
/// loop (arg is volatile, work() is noinline in another object, so neither
/// the call nor its argument can be hoisted) and answers
/// `<ns per iteration> <work(arg)> <checksum>`.
pub const CALLER: Program = Program {
    name: "caller",
    main_c: r#"#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "work.h"

volatile int arg = 5;

int main(void)
{
	char line[64];

	setvbuf(stdout, NULL, _IOLBF, 0);
	printf("ready\n");
	while (fgets(line, sizeof(line), stdin)) {
		struct timespec a, b;
		unsigned int s = 0;
		long iters;
		double ns;

		if (line[0] != 'm')
			break;
		iters = atol(line + 1);
		if (iters <= 0)
			iters = 1;
		clock_gettime(CLOCK_MONOTONIC, &a);
		for (long i = 0; i < iters; i++)
			s += work(arg);
		clock_gettime(CLOCK_MONOTONIC, &b);
		ns = ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / iters;
		printf("%.4f %d %u\n", ns, work(arg), s);
	}
	return 0;
}
"#,
    work_c: r#"#include "work.h"

__attribute__((noinline)) int work(int x)
{
	return x * 3 + 1;	/* version 1 */
}
"#,
    work_h: "#ifndef WORK_H\n#define WORK_H\nint work(int x);\n#endif\n",
    old_line: "\treturn x * 3 + 1;\t/* version 1 */",
    new_line: "\treturn x * 3 + 2;\t/* version 2 */",
};

pub const CALLER_BEFORE: i64 = 16;
pub const CALLER_AFTER: i64 = 17;

/// A built program and its patch.
pub struct Built {
    pub exe: PathBuf,
    pub patch_file: PathBuf,
    pub patch: hotsplice_trust::Verified,
    pub id: String,
}

/// A unified diff of `old` to `new` (same number of lines) as one hunk
/// covering the whole file, for `patch -p1`.
fn whole_file_diff(file: &str, old: &str, new: &str) -> String {
    let o: Vec<&str> = old.lines().collect();
    let n: Vec<&str> = new.lines().collect();
    assert_eq!(o.len(), n.len(), "fix must not add or remove lines");
    let mut out = format!(
        "--- a/{file}\n+++ b/{file}\n@@ -1,{} +1,{} @@\n",
        o.len(),
        n.len()
    );
    for (a, b) in o.iter().zip(&n) {
        if a == b {
            out.push_str(&format!(" {a}\n"));
        } else {
            out.push_str(&format!("-{a}\n+{b}\n"));
        }
    }
    out
}

/// Writes `prog`'s sources to `root/NAME/src`, builds them with `make`
/// and creates the patch with `hotsplice create`.
pub fn build(root: &Path, prog: &Program, hotsplice: &Path) -> Result<Built> {
    let base = root.join(prog.name);
    let src = base.join("src");
    let out = base.join("patches");
    fs::create_dir_all(&src)?;
    fs::create_dir_all(&out)?;
    fs::write(src.join("Makefile"), MAKEFILE)?;
    fs::write(src.join("main.c"), prog.main_c)?;
    fs::write(src.join("work.c"), prog.work_c)?;
    fs::write(src.join("work.h"), prog.work_h)?;
    let fixed = prog.work_c.replace(prog.old_line, prog.new_line);
    ensure!(fixed != prog.work_c, "{}: fix line not found", prog.name);
    let diff = base.join("fix.diff");
    fs::write(&diff, whole_file_diff("work.c", prog.work_c, &fixed))?;

    let make = Command::new("make")
        .arg("-s")
        .current_dir(&src)
        .output()
        .context("running make")?;
    if !make.status.success() {
        bail!(
            "{}: make failed:\n{}{}",
            prog.name,
            String::from_utf8_lossy(&make.stdout),
            String::from_utf8_lossy(&make.stderr)
        );
    }
    let create = Command::new(hotsplice)
        .arg("create")
        .arg("--patch")
        .arg(&diff)
        .arg("--description")
        .arg(format!("hotsplice-bench {}", prog.name))
        .arg("-o")
        .arg(&out)
        .arg(&src)
        .output()
        .with_context(|| format!("running {}", hotsplice.display()))?;
    let stdout = String::from_utf8_lossy(&create.stdout);
    if !create.status.success() {
        bail!(
            "{}: hotsplice create failed:\n{}{}",
            prog.name,
            stdout,
            String::from_utf8_lossy(&create.stderr)
        );
    }
    let printed: Vec<&str> = stdout
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    ensure!(
        printed.len() == 1,
        "{}: expected one patch file from hotsplice create, got: {stdout}",
        prog.name
    );
    let mut patch_file = PathBuf::from(printed[0]);
    if !patch_file.is_absolute() {
        patch_file = out.join(patch_file.file_name().unwrap_or_default());
    }
    let bytes =
        fs::read(&patch_file).with_context(|| format!("reading {}", patch_file.display()))?;
    // The bench calls the engine directly, with its own unsigned patch.
    let patch = hotsplice_trust::accept_unsigned(&bytes, &[], "no keys directory")
        .with_context(|| format!("parsing {}", patch_file.display()))?;
    ensure!(
        patch.meta.functions.len() == 1,
        "{}: the patch replaces {} functions, expected 1",
        prog.name,
        patch.meta.functions.len()
    );
    let id = patch.meta.id.to_string();
    Ok(Built {
        exe: src.join("prog"),
        patch_file,
        patch,
        id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_marks_only_the_changed_line() {
        let d = whole_file_diff("w.c", "a\nb\nc\n", "a\nB\nc\n");
        assert_eq!(d, "--- a/w.c\n+++ b/w.c\n@@ -1,3 +1,3 @@\n a\n-b\n+B\n c\n");
    }

    #[test]
    fn every_fix_line_is_present() {
        for p in [&STOPPER, &FLIPPER, &CALLER] {
            assert!(p.work_c.contains(p.old_line), "{}", p.name);
        }
    }
}
