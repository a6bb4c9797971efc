//! What a patch file holds, and what its signature is worth here.

use crate::error::{About as _, Result};
use crate::machine::Agent;
use hotsplice_patch::PatchFile;
use hotsplice_trust::SignatureStatus;
use serde::Serialize;
use std::path::Path;

/// A patch file described (`hotsplice info`).
#[derive(Debug, Clone, Serialize)]
pub struct PatchInfo {
    pub id: hotsplice_patch::PatchId,
    pub description: String,
    pub level: u32,
    pub tool: String,
    pub target: hotsplice_patch::Target,
    pub functions: Vec<String>,
    pub new_symbols: Vec<String>,
    pub code_size: u64,
    pub data_size: u64,
    pub relocations: usize,
    /// Bytes of unwind information (`.eh_frame`) the patch carries for its
    /// code; absent in patches that carry none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eh_frame_size: Option<u64>,
    pub signed: bool,
    pub key_id: Option<String>,
    /// `trusted`, `unknown-key`, `bad` or `unsigned`.
    pub signature: &'static str,
    /// Why a bad signature is bad.
    #[serde(skip)]
    pub signature_problem: Option<String>,
    /// The patch itself, for a detailed listing.
    #[serde(skip)]
    pub meta: hotsplice_patch::PatchMeta,
}

impl Agent {
    /// Describe a patch file: exactly one of trusted, unknown key, bad,
    /// unsigned. Nothing is verified for use.
    pub fn info(&self, file: &Path) -> Result<PatchInfo> {
        let bytes = self.read_patch_file(file)?;
        let pf = PatchFile::parse(&bytes).about(|| format!("patch {}", file.display()))?;
        let trusted = hotsplice_trust::trusted_keys(&self.paths.keys_dir())?;
        let status = hotsplice_trust::signature_status(&pf, &trusted);
        let m = pf.patch.meta;
        let key_id = status.key_id();
        Ok(PatchInfo {
            id: m.id.clone(),
            description: m.description.clone(),
            level: m.level,
            tool: m.tool.clone(),
            target: m.target.clone(),
            functions: m.functions.iter().map(|f| f.name.clone()).collect(),
            new_symbols: m.symbols.iter().map(|s| s.name.clone()).collect(),
            code_size: m.code_size,
            data_size: m.data_size,
            relocations: m.relocations.len(),
            eh_frame_size: m.eh_frame.map(|e| e.size),
            signed: key_id.is_some(),
            key_id,
            signature: status.name(),
            signature_problem: match &status {
                SignatureStatus::Bad { reason, .. } => Some(reason.clone()),
                _ => None,
            },
            meta: m,
        })
    }
}
