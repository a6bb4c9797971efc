//! The patch file format and the record of a patch applied in a process.
//!
//! A patch file is what `hotsplice create` writes and `hotsplice user apply`
//! reads: metadata (which build of which object it fixes, which functions it
//! replaces and what their code must look like, how to relocate the new
//! code) plus the new code and data. See `docs/patch-format.md`.
//!
//! ```
//! use hotsplice_patch::*;
//! let patch = Patch { meta: PatchMeta::example(), image: vec![0xc3] };
//! let bytes = patch.to_bytes();
//! assert_eq!(Patch::from_bytes(&bytes).unwrap().meta.id, patch.meta.id);
//! ```

mod file;
mod id;
mod journal;
mod record;
mod validate;

pub use file::*;
pub use id::*;
pub use journal::*;
pub use record::*;
pub use validate::*;
