//! The record hotsplice leaves at the start of every patch mapping inside a
//! patched process. `show` and `undo` read it back, so the process itself is
//! the source of truth about what is applied to it.

use serde::{Deserialize, Serialize};

/// First bytes of every patch mapping in a process.
pub const IMAGE_MAGIC: &[u8; 16] = b"HOTSPLICE-IMAGE1";
/// Magic, then a little-endian u32 length of the JSON that follows.
pub const IMAGE_PREFIX_LEN: usize = 20;

/// One replaced function, as applied.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AppliedFunction {
    pub name: String,
    /// Run-time address and size of the original function.
    pub addr: u64,
    pub size: u64,
    /// Run-time address of the replacement.
    pub new_addr: u64,
    /// Bytes the jump overwrote (hex); empty when no jump was written.
    pub saved: String,
}

/// What is applied in one mapping.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImageHeader {
    pub patch_id: String,
    #[serde(default)]
    pub description: String,
    pub target_name: String,
    pub target_build_id: String,
    /// Load bias of the target object when the patch was applied.
    pub target_bias: u64,
    /// Unix time of the apply, seconds.
    pub applied_at: u64,
    /// Increases with each apply in a process: the stacking order.
    pub sequence: u64,
    pub tool: String,
    /// The whole mapping, and its executable part (the replacement code).
    pub map_start: u64,
    pub map_len: u64,
    pub code_start: u64,
    pub code_len: u64,
    pub functions: Vec<AppliedFunction>,
}

impl ImageHeader {
    /// Magic, length, JSON.
    pub fn encode(&self) -> Vec<u8> {
        let json = serde_json::to_vec(self).expect("header serializes");
        let mut out = Vec::with_capacity(IMAGE_PREFIX_LEN + json.len());
        out.extend_from_slice(IMAGE_MAGIC);
        out.extend_from_slice(&(json.len() as u32).to_le_bytes());
        out.extend_from_slice(&json);
        out
    }

    /// Length of the JSON part if `prefix` starts a header.
    pub fn json_len(prefix: &[u8]) -> Option<usize> {
        if prefix.len() < IMAGE_PREFIX_LEN || &prefix[..16] != IMAGE_MAGIC {
            return None;
        }
        Some(u32::from_le_bytes(prefix[16..20].try_into().unwrap()) as usize)
    }

    pub fn decode(bytes: &[u8]) -> Option<ImageHeader> {
        let len = Self::json_len(bytes)?;
        serde_json::from_slice(bytes.get(IMAGE_PREFIX_LEN..IMAGE_PREFIX_LEN + len)?).ok()
    }

    /// Whether `addr` lies in this patch's code.
    pub fn code_contains(&self, addr: u64) -> bool {
        addr >= self.code_start && addr < self.code_start + self.code_len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips() {
        let h = ImageHeader {
            patch_id: "abcd1234".into(),
            description: String::new(),
            target_name: "prog".into(),
            target_build_id: "ab".into(),
            target_bias: 0x5555_0000_0000,
            applied_at: 1,
            sequence: 2,
            tool: "t".into(),
            map_start: 0x1000,
            map_len: 0x3000,
            code_start: 0x2000,
            code_len: 0x10,
            functions: vec![],
        };
        let b = h.encode();
        assert_eq!(ImageHeader::decode(&b), Some(h));
        assert_eq!(ImageHeader::decode(&b[..10]), None);
    }
}
