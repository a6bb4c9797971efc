use crate::fsutil::{temp_writer, MAX_JOURNAL_RECORD};
use crate::{check_dir, io_err, read_regular, write_atomic, Links, Paths, Result, StoreError};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The record kept per change in flight: one type for the engine, the
/// store and recovery (see [`hotsplice_patch::InFlight`]).
pub use hotsplice_patch::{InFlight, Op, Step};

/// A journal record that could not be used, renamed so that it is not read
/// again (report it once).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetAside {
    pub path: PathBuf,
    /// Where it is now (`NAME.bad`), or None when even renaming it failed.
    pub moved_to: Option<PathBuf>,
    pub reason: String,
}

impl std::fmt::Display for SetAside {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "journal record {} cannot be used ({})",
            self.path.display(),
            self.reason
        )?;
        match &self.moved_to {
            Some(to) => write!(
                f,
                "; moved aside to {}: if hotsplice was killed during that change, check the process with `hotsplice user show`",
                to.display()
            ),
            None => write!(f, "; remove it by hand"),
        }
    }
}

/// What [`Journal::scan`] found.
#[derive(Debug, Default)]
pub struct Scan {
    /// Changes left in flight by a previous run, by pid and patch.
    pub records: Vec<InFlight>,
    /// Records that could not be read, now renamed to `*.bad`.
    pub set_aside: Vec<SetAside>,
    /// Temporary files of writers that died (or older than a minute),
    /// removed.
    pub removed: Vec<PathBuf>,
}

/// A temporary file of a writer still alive is left alone this long.
pub const TEMP_GRACE: Duration = Duration::from_secs(60);

/// One file per change in flight under `STATE_DIR/journal/` (mode 0700,
/// records 0600; refused when writable by others, see [`crate::check_dir`]).
pub struct Journal {
    state_dir: PathBuf,
    dir: PathBuf,
}

impl Journal {
    pub fn open(paths: &Paths) -> Journal {
        Journal {
            state_dir: paths.state_dir.clone(),
            dir: paths.journal_dir(),
        }
    }

    fn check(&self) -> Result<bool> {
        check_dir(&self.state_dir, "state directory")?;
        check_dir(&self.dir, "journal directory")
    }

    fn path(&self, pid: i32, id: &str) -> Result<PathBuf> {
        if pid <= 0 || !hotsplice_patch::is_valid_id(id) {
            return Err(StoreError::Invalid {
                path: self.dir.display().to_string(),
                detail: format!(
                    "no journal record for pid {pid} and {id:?}: not a process and patch ID"
                ),
            });
        }
        Ok(self.dir.join(format!("{pid}-{id}.json")))
    }

    /// Record (or update) a change, durably, before it is made.
    pub fn record(&self, e: &InFlight) -> Result<()> {
        let path = self.path(e.pid, &e.id)?;
        self.check()?;
        write_atomic(
            &path,
            &serde_json::to_vec(e).expect("journal entry serializes"),
        )
    }

    /// The change is complete (or rolled back): forget it.
    pub fn clear(&self, pid: i32, id: &str) -> Result<()> {
        let p = self.path(pid, id)?;
        match std::fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&p)(e)),
        }
    }

    /// Changes left in flight by a previous run (see [`Journal::scan`]).
    pub fn pending(&self) -> Result<Vec<InFlight>> {
        Ok(self.scan()?.records)
    }

    /// Changes left in flight by a previous run; on the way, temporary files
    /// of dead writers (or older than [`TEMP_GRACE`]) are removed, and
    /// records that cannot be read are renamed to `NAME.bad`, so that each
    /// is reported once instead of being read by every command.
    pub fn scan(&self) -> Result<Scan> {
        let mut out = Scan::default();
        if !self.check()? {
            return Ok(out);
        }
        let entries = std::fs::read_dir(&self.dir).map_err(io_err(&self.dir))?;
        for e in entries.flatten() {
            let p = e.path();
            let Some(name) = e.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if let Some(writer) = temp_writer(&name) {
                if stale_temp(&p, writer) && std::fs::remove_file(&p).is_ok() {
                    out.removed.push(p);
                }
                continue;
            }
            if !name.ends_with(".json") {
                continue;
            }
            match read_record(&p, &name) {
                Ok(r) => out.records.push(r),
                Err(reason) => {
                    let to = p.with_file_name(format!("{name}.bad"));
                    let moved_to = std::fs::rename(&p, &to).ok().map(|_| to);
                    out.set_aside.push(SetAside {
                        path: p,
                        moved_to,
                        reason,
                    });
                }
            }
        }
        out.records
            .sort_by_key(|e: &InFlight| (e.pid, e.id.clone()));
        Ok(out)
    }
}

/// A record, checked against its file name `PID-ID.json`.
fn read_record(p: &Path, name: &str) -> std::result::Result<InFlight, String> {
    let bytes = read_regular(p, "journal record", MAX_JOURNAL_RECORD, Links::Refuse).map_err(
        |e| match e {
            StoreError::Io { source, .. } => source.to_string(),
            other => other.to_string(),
        },
    )?;
    let r: InFlight = serde_json::from_slice(&bytes).map_err(|e| format!("not a record: {e}"))?;
    if format!("{}-{}.json", r.pid, r.id) != name || !hotsplice_patch::is_valid_id(&r.id) {
        return Err(format!(
            "its content (pid {}, patch {:?}) does not match its name",
            r.pid, r.id
        ));
    }
    Ok(r)
}

/// Whether a temporary file of `writer` can go: its writer is gone, or it
/// is older than [`TEMP_GRACE`] (no write takes that long).
fn stale_temp(p: &Path, writer: i32) -> bool {
    // SAFETY: kill with signal 0 only checks whether the process exists.
    let alive = writer > 0
        && (unsafe { libc::kill(writer, 0) } == 0
            || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM));
    let old = std::fs::symlink_metadata(p)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age > TEMP_GRACE);
    !alive || old
}

#[cfg(test)]
mod tests {
    use super::*;

    fn journal() -> (tempfile::TempDir, Journal) {
        let d = tempfile::tempdir().unwrap();
        let paths = Paths {
            config_dir: d.path().join("etc"),
            state_dir: d.path().join("state"),
            run_dir: d.path().join("run"),
        };
        (d, Journal::open(&paths))
    }

    fn rec(pid: i32, id: &str) -> InFlight {
        InFlight {
            op: Op::Apply,
            pid,
            start_time: 1,
            id: hotsplice_patch::PatchId::unchecked(id),
            map_start: 0,
            map_len: 0,
            step: Step::Mapping,
        }
    }

    #[test]
    fn records_round_trip_and_clear() {
        let (_d, j) = journal();
        assert!(j.pending().unwrap().is_empty());
        j.record(&rec(12, "aaaaaaa1")).unwrap();
        assert_eq!(j.pending().unwrap(), vec![rec(12, "aaaaaaa1")]);
        j.clear(12, "aaaaaaa1").unwrap();
        assert!(j.pending().unwrap().is_empty());
        assert!(j.record(&rec(12, "../../x")).is_err());
        assert!(j.clear(12, "../../x").is_err());
    }

    #[test]
    fn stale_temporaries_go_and_bad_records_are_set_aside_once() {
        let (_d, j) = journal();
        j.record(&rec(12, "aaaaaaa1")).unwrap();
        // A temporary file of a writer that is gone, one of ours (alive,
        // fresh), and damaged records.
        let dead = j.dir.join(".13-bbbbbbb1.json.tmp.999999999.0");
        let live = j
            .dir
            .join(format!(".14-bbbbbbb1.json.tmp.{}.0", std::process::id()));
        std::fs::write(&dead, b"{").unwrap();
        std::fs::write(&live, b"{").unwrap();
        std::fs::write(j.dir.join("15-ccccccc1.json"), b"not json").unwrap();
        std::fs::write(
            j.dir.join("16-ccccccc2.json"),
            serde_json::to_vec(&rec(17, "ccccccc2")).unwrap(),
        )
        .unwrap();
        let s = j.scan().unwrap();
        assert_eq!(s.records, vec![rec(12, "aaaaaaa1")]);
        assert_eq!(s.removed, vec![dead.clone()]);
        assert_eq!(s.set_aside.len(), 2, "{:?}", s.set_aside);
        assert!(s.set_aside.iter().all(|a| a.moved_to.is_some()));
        assert!(live.exists() && !dead.exists());
        assert!(j.dir.join("15-ccccccc1.json.bad").exists());
        let again = j.scan().unwrap();
        assert!(again.set_aside.is_empty() && again.removed.is_empty());
        assert_eq!(again.records.len(), 1);
    }
}
