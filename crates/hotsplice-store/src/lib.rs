//! Everything hotsplice keeps on disk, each piece written crash-safely
//! (write a temporary file, fsync, rename, fsync the directory):
//!
//! * [`Paths`]: where things live; every location can be moved with an
//!   environment variable, so tests never touch the machine's own.
//! * [`Config`]: `/etc/hotsplice/hotsplice.conf` (TOML).
//! * [`Store`]: installed patches (`/var/lib/hotsplice`), versioned index.
//! * [`Journal`]: one record per change to a process in flight, so the next
//!   command can finish or roll back what a killed one left.
//! * [`Blacklist`]: `blacklist.d/*.conf` exclusions.
//!
//! ```no_run
//! let paths = hotsplice_store::Paths::from_env();
//! let store = hotsplice_store::Store::open(&paths).unwrap();
//! for e in store.list().unwrap() { println!("{} level {}", e.id, e.level); }
//! ```

mod blacklist;
mod config;
mod fsutil;
mod journal;
mod store;

pub use blacklist::*;
pub use config::*;
pub use fsutil::{
    check_dir, check_owner_and_mode, create_private_dir_all, euid, kind_of, open_regular,
    read_bounded, read_regular, read_trusted, write_atomic, write_atomic_mode, FileLock, Links,
    MAX_CONFIG_FILE, MAX_INDEX_FILE, MAX_JOURNAL_RECORD, MAX_PATCH_FILE, PRIVATE_DIR_MODE,
    PRIVATE_FILE_MODE, PUBLIC_FILE_MODE,
};
pub use journal::*;
pub use store::*;

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {detail}")]
    Invalid { path: String, detail: String },
    #[error("{path} was written by a newer hotsplice (store format {found}, this one reads up to {supported}); upgrade hotsplice")]
    TooNew {
        path: String,
        found: u32,
        supported: u32,
    },
    #[error("patch {0} is not installed")]
    NotInstalled(String),
    #[error("{path}: refusing to use this {what}: it is {problem} (mode {mode:04o}, owner uid {owner}), so someone else could steer hotsplice through it; check what it holds, then run `{fix}`")]
    Insecure {
        path: String,
        what: &'static str,
        problem: String,
        mode: u32,
        owner: u32,
        fix: String,
    },
    #[error("{path}: this {what} is a {kind}, not a {expected}; give the path of a {what}")]
    NotRegular {
        path: String,
        what: &'static str,
        kind: &'static str,
        expected: &'static str,
    },
    #[error("{path}: {} is more than a {what} may be ({}); is this the right file?", fsutil::human(*size), fsutil::human(*limit))]
    TooLarge {
        path: String,
        what: &'static str,
        size: u64,
        limit: u64,
    },
}

pub type Result<T> = std::result::Result<T, StoreError>;

pub(crate) fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Where hotsplice keeps its files.
#[derive(Debug, Clone)]
pub struct Paths {
    /// `/etc/hotsplice` (`HOTSPLICE_CONFIG_DIR`).
    pub config_dir: PathBuf,
    /// `/var/lib/hotsplice` (`HOTSPLICE_STATE_DIR`).
    pub state_dir: PathBuf,
    /// `/run/hotsplice` (`HOTSPLICE_RUN_DIR`): locks.
    pub run_dir: PathBuf,
}

impl Paths {
    pub fn from_env() -> Paths {
        let get = |var: &str, default: &str| {
            std::env::var_os(var)
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(default))
        };
        Paths {
            config_dir: get("HOTSPLICE_CONFIG_DIR", "/etc/hotsplice"),
            state_dir: get("HOTSPLICE_STATE_DIR", "/var/lib/hotsplice"),
            run_dir: get("HOTSPLICE_RUN_DIR", "/run/hotsplice"),
        }
    }

    pub fn keys_dir(&self) -> PathBuf {
        self.config_dir.join("keys")
    }
    pub fn config_file(&self) -> PathBuf {
        self.config_dir.join("hotsplice.conf")
    }
    pub fn blacklist_dir(&self) -> PathBuf {
        self.config_dir.join("blacklist.d")
    }
    pub fn journal_dir(&self) -> PathBuf {
        self.state_dir.join("journal")
    }
}
