//! A test harness (`harness = false` test targets) for tests that are
//! skipped as a whole, by the environment, at run time: skipped tests are
//! listed as `ignored`, not as passed. On `libtest-mimic`, so the usual
//! `cargo test` arguments work (name filters, `--ignored`, `--list`,
//! `--test-threads`, `--nocapture`).

pub use libtest_mimic;
use libtest_mimic::{Arguments, Trial};

/// One test: its name and its body (which fails by panicking).
pub type Test = (&'static str, fn());

/// `[(name, fn), ...]` from test function names.
#[macro_export]
macro_rules! tests {
    ($($f:ident),* $(,)?) => {
        vec![$((stringify!($f), $f as fn())),*]
    };
}

/// Runs `tests` and exits with the harness's status. With `skip` set (the
/// reason), every test is ignored: it runs only when asked for with
/// `--ignored` or `--include-ignored`; the reason is printed once.
pub fn main(skip: Option<String>, tests: Vec<Test>) -> ! {
    main_with(skip, tests, Vec::new())
}

/// [`main`], with `always` tests too, which `skip` does not concern.
pub fn main_with(skip: Option<String>, tests: Vec<Test>, always: Vec<Test>) -> ! {
    let args = Arguments::from_args();
    if let Some(why) = &skip {
        eprintln!("ignoring the tests that need it: {why}");
    }
    let trial = |(name, f): Test, ignored: bool| {
        Trial::test(name, move || {
            f();
            Ok(())
        })
        .with_ignored_flag(ignored)
    };
    let trials = tests
        .into_iter()
        .map(|t| trial(t, skip.is_some()))
        .chain(always.into_iter().map(|t| trial(t, false)))
        .collect();
    libtest_mimic::run(&args, trials).exit()
}
