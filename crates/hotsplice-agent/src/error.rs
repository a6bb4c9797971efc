//! The agent's error: what went wrong, as the crate that found it said,
//! with the context the agent adds ("installed patch X (path)") as outer
//! links of a chain. Render a chain with [`chain`] (one line) or walk
//! [`std::error::Error::source`] (the CLI's `Caused by:` lines); no link
//! repeats its source in its own message.

use std::fmt;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Engine(#[from] hotsplice_engine::EngineError),
    #[error(transparent)]
    Store(#[from] hotsplice_store::StoreError),
    #[error(transparent)]
    Trust(#[from] hotsplice_trust::TrustError),
    #[error(transparent)]
    Kernel(#[from] hotsplice_kernel::KernelError),
    #[error(transparent)]
    Create(#[from] hotsplice_create::CreateError),
    #[error(transparent)]
    Format(#[from] hotsplice_patch::FormatError),
    #[error(transparent)]
    Process(#[from] hotsplice_process::Error),
    #[error(transparent)]
    Fleet(#[from] crate::fleet::FleetError),
    /// A file or directory that cannot be read or written.
    #[error("{path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The request itself cannot be carried out as asked: the message says
    /// what to ask instead.
    #[error("{0}")]
    Request(String),
    /// `what` failed, because of `source`.
    #[error("{what}")]
    About {
        what: String,
        #[source]
        source: Box<AgentError>,
    },
}

pub type Result<T, E = AgentError> = std::result::Result<T, E>;

impl AgentError {
    pub fn io(path: impl fmt::Display, source: std::io::Error) -> AgentError {
        AgentError::Io {
            path: path.to_string(),
            source,
        }
    }
}

/// Adds context to an error: `r.about(|| format!("patch {path}"))`.
pub trait About<T> {
    fn about(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T, E: Into<AgentError>> About<T> for std::result::Result<T, E> {
    fn about(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| AgentError::About {
            what: what(),
            source: Box::new(e.into()),
        })
    }
}

/// Every link of an error chain, outermost first, each said once: a link
/// whose message already ends with its source's (`"{path}: {source}"`, or
/// a `transparent` wrapper) does not get that source again.
pub fn links(e: &(dyn std::error::Error + 'static)) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut cur = Some(e);
    while let Some(err) = cur {
        let text = err.to_string();
        let said = out.last().is_some_and(|prev| prev.ends_with(&text));
        if !said && !text.is_empty() {
            out.push(text);
        }
        cur = err.source();
    }
    out
}

/// The chain on one line, `outer: inner: cause` (for logs and `--json`).
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    links(e).join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_is_rendered_once() {
        let e = AgentError::io("/x.key", std::io::Error::from_raw_os_error(libc_enoent()));
        let e: Result<()> = Err(e).about(|| "reading the key".into());
        let e = e.unwrap_err();
        let l = links(&e);
        assert_eq!(l.len(), 3, "{l:?}");
        assert_eq!(l[0], "reading the key");
        assert_eq!(l[1], "/x.key");
        assert!(l[2].starts_with("No such file or directory"), "{l:?}");
        assert_eq!(chain(&e).matches("No such file").count(), 1);
    }

    fn libc_enoent() -> i32 {
        2
    }
}
