//! Checks the end-to-end fixtures themselves, without hotsplice: each
//! case's src/ builds and prints `before`; rebuilt with fix.diff applied it
//! prints `after` (and with fix2.diff, `after2`). Needs only cc, make, patch.

mod common;

use common::{all_cases, Case, Stream, LINE_TIMEOUT};
use std::thread;

fn check_build(case: &Case, diffs: &[&str], stream: Stream, want: &str) -> Result<(), String> {
    let build = case.build_with(diffs);
    let mut proc = build.start(case);
    if !proc.wait_for_line(stream, 0, want, LINE_TIMEOUT) {
        return Err(format!(
            "{} built with {diffs:?}: no line {want:?} on {stream:?}\n{}",
            case.name,
            proc.describe()
        ));
    }
    // Lines that must keep coming from other threads (threads case).
    for s in case.list("steady") {
        if !proc.wait_for_line(Stream::Stdout, 0, &s, LINE_TIMEOUT) {
            return Err(format!(
                "{} built with {diffs:?}: no steady line {s:?}\n{}",
                case.name,
                proc.describe()
            ));
        }
    }
    proc.assert_alive(&case.name);
    Ok(())
}

fn check_case(name: &str) -> Result<(), String> {
    let case = Case::load(name);
    let before = case.before();
    let after = case.after();
    if before == after {
        return Err(format!("{name}: before == after"));
    }
    if case.run_argv().is_empty() {
        return Err(format!("{name}: empty `run`"));
    }
    if !case.diff("fix.diff").is_file() {
        return Err(format!("{name}: no fix.diff"));
    }
    check_build(&case, &[], Stream::Stdout, before)?;
    check_build(&case, &["fix.diff"], case.after_stream(), after)?;
    let has_fix2 = case.diff("fix2.diff").is_file();
    match (case.get("after2"), has_fix2) {
        (Some(after2), true) => {
            if after2 == after || after2 == before {
                return Err(format!("{name}: after2 not distinct"));
            }
            check_build(&case, &["fix2.diff"], Stream::Stdout, after2)?;
        }
        (None, false) => {}
        _ => return Err(format!("{name}: after2 and fix2.diff must come together")),
    }
    Ok(())
}

#[test]
fn fixtures_flip_when_rebuilt() {
    let cases = all_cases();
    assert!(
        cases.len() >= 21,
        "expected at least 21 fixture cases, got {cases:?}"
    );
    // A few cases at a time: each build takes a moment.
    let mut failures = Vec::new();
    for chunk in cases.chunks(4) {
        let results: Vec<Result<(), String>> = thread::scope(|s| {
            let handles: Vec<_> = chunk
                .iter()
                .map(|name| {
                    s.spawn(move || {
                        std::panic::catch_unwind(|| check_case(name)).unwrap_or_else(|p| {
                            let msg = p
                                .downcast_ref::<String>()
                                .cloned()
                                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                                .unwrap_or_default();
                            Err(format!("{name}: panicked: {msg}"))
                        })
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        failures.extend(results.into_iter().filter_map(Result::err));
    }
    assert!(
        failures.is_empty(),
        "{} fixture(s) failed:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}
