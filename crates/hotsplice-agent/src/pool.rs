//! The worker pool: a few threads, each process handled start to end by
//! one of them (ptrace requests must come from the thread that attached).

/// What a pool run did: the results of the jobs that ran, in job order,
/// and how many jobs were not started because a stop was requested.
pub struct PoolRun<T> {
    pub results: Vec<T>,
    pub not_started: usize,
}

/// Run `f` for each job on a few worker threads. Once `stop()` says so, no
/// job starts; the jobs in flight finish.
pub fn run_parallel<J: Sync, T: Send>(
    jobs: &[J],
    stop: fn() -> bool,
    f: impl Fn(&J) -> T + Sync,
) -> PoolRun<T> {
    // More workers than CPUs only stretches each process's stop window.
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let workers = jobs.len().clamp(1, cpus.clamp(1, 8));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let skipped = std::sync::atomic::AtomicUsize::new(0);
    let mut out: Vec<(usize, T)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if i >= jobs.len() {
                            break;
                        }
                        if stop() {
                            skipped.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            continue;
                        }
                        mine.push((i, f(&jobs[i])));
                    }
                    mine
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| match h.join() {
                Ok(v) => v,
                // A job's panic is a bug: let it reach the caller as one.
                Err(p) => std::panic::resume_unwind(p),
            })
            .collect()
    });
    out.sort_by_key(|(i, _)| *i);
    PoolRun {
        results: out.into_iter().map(|(_, r)| r).collect(),
        not_started: skipped.into_inner(),
    }
}

/// Group `(pid, item)` jobs per process, keeping order.
pub fn by_pid<T>(jobs: Vec<(i32, T)>) -> Vec<(i32, Vec<T>)> {
    let mut out: Vec<(i32, Vec<T>)> = Vec::new();
    for (p, t) in jobs {
        match out.iter_mut().find(|(q, _)| *q == p) {
            Some((_, v)) => v.push(t),
            None => out.push((p, vec![t])),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_keep_job_order_and_group_by_pid() {
        let r = run_parallel(&[3, 1, 2], || false, |j| j * 10);
        assert_eq!(r.results, vec![30, 10, 20]);
        assert_eq!(r.not_started, 0);
        let g = by_pid(vec![(5, 'a'), (6, 'b'), (5, 'c')]);
        assert_eq!(g, vec![(5, vec!['a', 'c']), (6, vec!['b'])]);
    }

    #[test]
    fn a_stop_request_starts_no_job() {
        let r = run_parallel(&[1, 2, 3], || true, |j| *j);
        assert!(r.results.is_empty());
        assert_eq!(r.not_started, 3);
    }
}
