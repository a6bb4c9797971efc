use crate::{io_err, write_atomic, Paths, Result};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// What a change to a process was doing when it was last recorded.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct InFlight {
    /// `apply` or `undo`.
    pub op: String,
    pub pid: i32,
    /// The process's start time (`/proc/PID/stat` field 22), so a reused
    /// pid is not mistaken for the process the record is about.
    pub start_time: u64,
    pub id: String,
    /// Where the patch is mapped in the process (0 before it is).
    pub map_start: u64,
    pub map_len: u64,
    /// The last step reached (see `hotsplice_engine::Step`).
    pub step: String,
}

/// One file per change in flight under `STATE_DIR/journal/`.
pub struct Journal {
    dir: PathBuf,
}

impl Journal {
    pub fn open(paths: &Paths) -> Journal {
        Journal {
            dir: paths.journal_dir(),
        }
    }

    fn path(&self, pid: i32, id: &str) -> PathBuf {
        self.dir.join(format!("{pid}-{id}.json"))
    }

    /// Record (or update) a change, durably, before it is made.
    pub fn record(&self, e: &InFlight) -> Result<()> {
        write_atomic(
            &self.path(e.pid, &e.id),
            &serde_json::to_vec(e).expect("journal entry serializes"),
        )
    }

    /// The change is complete (or rolled back): forget it.
    pub fn clear(&self, pid: i32, id: &str) -> Result<()> {
        let p = self.path(pid, id);
        match std::fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&p)(e)),
        }
    }

    /// Changes left in flight by a previous run.
    pub fn pending(&self) -> Result<Vec<InFlight>> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for e in entries.flatten() {
            let p = e.path();
            if p.extension().is_none_or(|x| x != "json") {
                continue;
            }
            let bytes = std::fs::read(&p).map_err(io_err(&p))?;
            match serde_json::from_slice(&bytes) {
                Ok(entry) => out.push(entry),
                // A record is replaced atomically, so this is not ours.
                Err(_) => continue,
            }
        }
        out.sort_by_key(|e: &InFlight| (e.pid, e.id.clone()));
        Ok(out)
    }
}
