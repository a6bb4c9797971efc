//! Reading a mirror (`hotsplice mirror`'s directory) for `hotsplice-server
//! import`: an air-gapped site's server takes a channel from another
//! server as files carried over by hand, so each is checked as a machine
//! would check it before anything is stored.

use hotsplice_fleet::feed::{self, FeedEntry, FeedList, SignedFeed, ANY_MACHINE};
use hotsplice_trust::PublicKey;
use std::path::Path;

/// Why a mirror was refused.
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: more than {limit} bytes")]
    TooBig { path: String, limit: u64 },
    #[error("{path}: not a signed feed: {detail}")]
    NotAFeed { path: String, detail: String },
    #[error("{path}: {source}")]
    Feed {
        path: String,
        source: feed::FeedError,
    },
    #[error("{path}: the list is for machine {machine}, not a channel's list (`hotsplice mirror` writes those)")]
    NotAChannel { path: String, machine: String },
}

fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>, MirrorError> {
    use std::io::Read;
    let io = |source| MirrorError::Io {
        path: path.display().to_string(),
        source,
    };
    let f = std::fs::File::open(path).map_err(io)?;
    let mut out = Vec::new();
    f.take(limit + 1).read_to_end(&mut out).map_err(io)?;
    if out.len() as u64 > limit {
        return Err(MirrorError::TooBig {
            path: path.display().to_string(),
            limit,
        });
    }
    Ok(out)
}

/// The list of `dir/feed.json`, opened with the exporting server's
/// `feed_key`, not expired, a channel's list; and each listed file, whose
/// size and SHA-256 match the list. (Publishing then checks each file's
/// publisher signature against the importing server's keys.)
pub fn read(dir: &Path, feed_key: &PublicKey) -> Result<Vec<(FeedEntry, Vec<u8>)>, MirrorError> {
    let path = dir.join("feed.json");
    let p = path.display().to_string();
    let bytes = read_bounded(&path, feed::MAX_FEED_BYTES as u64 + (64 << 10))?;
    let signed: SignedFeed = serde_json::from_slice(&bytes).map_err(|e| MirrorError::NotAFeed {
        path: p.clone(),
        detail: e.to_string(),
    })?;
    let list: FeedList = signed.open(feed_key).map_err(|source| MirrorError::Feed {
        path: p.clone(),
        source,
    })?;
    if list.machine != ANY_MACHINE {
        return Err(MirrorError::NotAChannel {
            path: p,
            machine: list.machine,
        });
    }
    feed::accept(&list, ANY_MACHINE, None, hotsplice_fleet::now())
        .map_err(|source| MirrorError::Feed { path: p, source })?;
    let mut out = Vec::new();
    for e in list.patches {
        let file = dir.join(format!("{}.hsp", e.sha256.to_ascii_lowercase()));
        let bytes = read_bounded(&file, e.size)?;
        feed::check_blob(&e, &bytes).map_err(|source| MirrorError::Feed {
            path: file.display().to_string(),
            source,
        })?;
        out.push((e, bytes));
    }
    Ok(out)
}
