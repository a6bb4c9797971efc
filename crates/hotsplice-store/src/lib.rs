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
pub use fsutil::{write_atomic, FileLock};
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
