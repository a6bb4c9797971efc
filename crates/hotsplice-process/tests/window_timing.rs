//! Prints (never asserts) how long threads stay stopped in the stop window.
//! Run: cargo test -p hotsplice-process --release --test window_timing -- --nocapture

mod common;

use std::time::{Duration, Instant};

use common::*;
use hotsplice_process::*;

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

#[test]
fn print_stop_window_times() {
    let dir = tempfile::tempdir().unwrap();
    let exe = compile(dir.path(), "target", TARGET_C);
    for idle in [8usize, 998] {
        let mut t = Target::spawn(&exe, &[&idle.to_string()]);
        t.wait_for(T, |l| l.starts_with("ready"));
        let pid = t.pid();
        let mut tr = Tracee::seize(pid).unwrap();
        let n = tr.thread_count();
        let mut stop = Vec::new();
        let mut window = Vec::new();
        for _ in 0..30 {
            std::thread::sleep(Duration::from_millis(5));
            let t0 = Instant::now();
            let w = tr.stop_all().unwrap();
            let t1 = Instant::now();
            assert_eq!(w.threads().len(), n);
            w.resume().unwrap();
            let t2 = Instant::now();
            stop.push(t1 - t0);
            window.push(t2 - t0);
        }
        std::thread::sleep(Duration::from_millis(5));
        let t0 = Instant::now();
        let w = tr.stop_all().unwrap();
        w.detach_all().unwrap();
        let detach_window = t0.elapsed();
        println!(
            "threads={n:5}: stop_all median {:?} p90 {:?} | stop_all+resume median {:?} p90 {:?} max {:?} | stop_all+detach_all {:?}",
            pct(&mut stop, 0.5),
            pct(&mut stop, 0.9),
            pct(&mut window, 0.5),
            pct(&mut window, 0.9),
            pct(&mut window, 1.0),
            detach_window
        );
        drop(tr);
        t.ticks(2, T);
    }
}
