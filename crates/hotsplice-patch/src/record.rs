//! The record hotsplice leaves at the start of every patch mapping inside a
//! patched process. `show` and `undo` read it back, so the process itself is
//! the source of truth about what is applied to it.

use crate::validate::{is_build_id, name_problem, quoted, MAX_FUNCTIONS, MAX_IMAGE_HEADER_LEN};
use crate::{is_valid_id, BuildId, PatchId, PAGE};
use hotsplice_arch::current as arch;
use serde::{Deserialize, Serialize};

/// First bytes of every patch mapping in a process.
pub const IMAGE_MAGIC: &[u8; 16] = b"HOTSPLICE-IMAGE1";
/// What the magic of a record becomes in the stop window that takes its
/// patch out (undo, or replacement by a higher level): the mapping is
/// about to go, and no reader lists it as applied even if unmapping it
/// fails; the rest of the record is left as it was.
pub const RETIRED_MAGIC: &[u8; 16] = b"HOTSPLICE-RETIRE";
/// Magic, then a little-endian u32 length of the JSON that follows.
pub const IMAGE_PREFIX_LEN: usize = 20;

/// [`AppliedFunction::saved`] as records store it: hex, `""` for none.
mod saved_hex {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.as_deref().map(hex::encode).unwrap_or_default())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        let text = String::deserialize(d)?;
        if text.is_empty() {
            return Ok(None);
        }
        hex::decode(&text).map(Some).map_err(|_| {
            D::Error::custom(format!(
                "saved = {}: the saved bytes are not hex",
                crate::validate::quoted(&text)
            ))
        })
    }
}

/// One replaced function, as applied.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AppliedFunction {
    pub name: String,
    /// Run-time address and size of the original function.
    pub addr: u64,
    pub size: u64,
    /// Run-time address of the replacement.
    pub new_addr: u64,
    /// Bytes the jump overwrote; `None` when no jump was written (stored
    /// as hex, `""` for none).
    #[serde(with = "saved_hex")]
    pub saved: Option<Vec<u8>>,
}

/// A patch applied in a process: the record at the start of its mapping,
/// which says what is applied there.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AppliedRecord {
    pub patch_id: PatchId,
    #[serde(default)]
    pub description: String,
    pub target_name: String,
    pub target_build_id: BuildId,
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
    /// Applied with `--let-running-finish`: threads that were inside a
    /// replaced function then finish that call in the old code (every new
    /// call takes the new code). Absent (false) in older records.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub running_may_finish: bool,
    /// The patch's unwind information in the process and its registration
    /// with the program's unwinder. Absent in older records and for
    /// patches without unwind information.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unwind: Option<UnwindRecord>,
}

/// Where a patch's relocated `.eh_frame` lies in the process, and the
/// memory its registration with libgcc's unwinder uses (see
/// `docs/busy-check.md`, "Unwind information of patch code").
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct UnwindRecord {
    /// The entries (ending with the zero terminator), inside the code.
    pub eh_frame: u64,
    pub eh_frame_len: u64,
    /// The registration thunk (read+execute, in the record's pages).
    pub thunk: u64,
    /// libgcc's `struct object` for this registration (read+write).
    pub object: u64,
    /// The registration state word (read+write), [`UnwindState`].
    pub state: u64,
}

/// The registration state word of a patch mapping, written by the thunk
/// in the target itself around libgcc's calls, so that it is true whatever
/// happens to hotsplice: 0 never registered, then the values below.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnwindState {
    /// Never registered (the page is fresh).
    None,
    /// `__register_frame_info` is running (or crashed: never deregister,
    /// never unmap).
    Registering,
    Registered,
    /// `__deregister_frame_info` is running.
    Deregistering,
    Deregistered,
    /// A value hotsplice never writes.
    Unknown(u64),
}

impl UnwindState {
    pub const REGISTERING: u64 = 1;
    pub const REGISTERED: u64 = 2;
    pub const DEREGISTERING: u64 = 3;
    pub const DEREGISTERED: u64 = 4;

    pub fn of(word: u64) -> UnwindState {
        match word {
            0 => UnwindState::None,
            Self::REGISTERING => UnwindState::Registering,
            Self::REGISTERED => UnwindState::Registered,
            Self::DEREGISTERING => UnwindState::Deregistering,
            Self::DEREGISTERED => UnwindState::Deregistered,
            w => UnwindState::Unknown(w),
        }
    }
}

/// Why bytes found in a process are not a record hotsplice wrote.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("does not start with the record magic")]
    NoMagic,
    #[error("claims {len} bytes, more than the {max} bytes hotsplice ever writes")]
    TooLong { len: u64, max: usize },
    #[error("is truncated: {need} bytes needed, {have} present")]
    Truncated { need: usize, have: usize },
    #[error("is not a patch record: {0}")]
    Json(String),
    #[error("has {field} = {value}: {why}")]
    Field {
        field: String,
        value: String,
        why: String,
    },
}

fn bad(
    field: impl Into<String>,
    value: impl std::fmt::Display,
    why: impl Into<String>,
) -> RecordError {
    RecordError::Field {
        field: field.into(),
        value: value.to_string(),
        why: why.into(),
    }
}

impl AppliedFunction {
    /// The bytes the jump overwrote: exactly a jump's length, or an error
    /// (a function without a jump has none).
    pub fn saved_bytes(&self) -> Result<&[u8], RecordError> {
        let field = || format!("functions ({}).saved", quoted(&self.name));
        let bytes = self
            .saved
            .as_deref()
            .ok_or_else(|| bad(field(), "\"\"", "no jump was written over it"))?;
        if bytes.len() != arch::JUMP_LEN {
            return Err(bad(
                field(),
                format!("{} byte(s)", bytes.len()),
                format!("a jump overwrites exactly {} bytes", arch::JUMP_LEN),
            ));
        }
        Ok(bytes)
    }

    /// Whether a jump was written over the function.
    pub fn jumped(&self) -> bool {
        self.saved.is_some()
    }
}

impl AppliedRecord {
    /// Magic, length, JSON.
    pub fn encode(&self) -> Vec<u8> {
        let json = serde_json::to_vec(self).expect("header serializes");
        let mut out = Vec::with_capacity(IMAGE_PREFIX_LEN + json.len());
        out.extend_from_slice(IMAGE_MAGIC);
        out.extend_from_slice(&(json.len() as u32).to_le_bytes());
        out.extend_from_slice(&json);
        out
    }

    /// If `prefix` starts a record: the record's whole length (magic, length
    /// and JSON), which is never more than [`MAX_IMAGE_HEADER_LEN`]. Only
    /// the first [`IMAGE_PREFIX_LEN`] bytes are looked at.
    pub fn record_len(prefix: &[u8]) -> Result<usize, RecordError> {
        if prefix.len() < IMAGE_MAGIC.len() || &prefix[..IMAGE_MAGIC.len()] != IMAGE_MAGIC {
            return Err(RecordError::NoMagic);
        }
        let Some(len) = prefix.get(16..IMAGE_PREFIX_LEN) else {
            return Err(RecordError::Truncated {
                need: IMAGE_PREFIX_LEN,
                have: prefix.len(),
            });
        };
        let total =
            IMAGE_PREFIX_LEN as u64 + u64::from(u32::from_le_bytes(len.try_into().unwrap()));
        if total > MAX_IMAGE_HEADER_LEN as u64 {
            return Err(RecordError::TooLong {
                len: total,
                max: MAX_IMAGE_HEADER_LEN,
            });
        }
        Ok(total as usize)
    }

    /// Parse a record (bytes past its end are ignored) and check that it is
    /// consistent in itself ([`AppliedRecord::validate`]). The bytes come
    /// from a process, which may have written anything there.
    pub fn decode(bytes: &[u8]) -> Result<AppliedRecord, RecordError> {
        let h = Self::parse(bytes)?;
        h.validate(Self::record_len(bytes)?)?;
        Ok(h)
    }

    /// The patch id a record claims, if well formed, even when the rest of
    /// it does not parse (for reports about it).
    pub fn claimed_id(bytes: &[u8]) -> Option<PatchId> {
        let total = Self::record_len(bytes).ok()?;
        let json = bytes.get(IMAGE_PREFIX_LEN..total)?;
        let v: serde_json::Value = serde_json::from_slice(json).ok()?;
        let id = v.get("patch_id")?.as_str()?;
        id.parse().ok()
    }

    /// Parse a record without checking what it says (see
    /// [`AppliedRecord::decode`], which does).
    pub fn parse(bytes: &[u8]) -> Result<AppliedRecord, RecordError> {
        let total = Self::record_len(bytes)?;
        let json = bytes
            .get(IMAGE_PREFIX_LEN..total)
            .ok_or(RecordError::Truncated {
                need: total,
                have: bytes.len(),
            })?;
        serde_json::from_slice(json).map_err(|e| RecordError::Json(e.to_string()))
    }

    /// What a record hotsplice wrote always is, `record_len` bytes long at
    /// `map_start`: ids, names and build-id well formed, the mapping and
    /// code ranges sum without overflow, the code after the record and
    /// inside the mapping, each replacement inside the code, each saved
    /// entry exactly a jump's length, jumps not overlapping each other or
    /// the patch's own mapping. Whether the addresses are mapped in the
    /// process is the reader's business.
    pub fn validate(&self, record_len: usize) -> Result<(), RecordError> {
        if !is_valid_id(&self.patch_id) {
            return Err(bad(
                "patch_id",
                quoted(&self.patch_id),
                "a patch id is 8 lowercase letters and digits",
            ));
        }
        if let Some(why) = name_problem(&self.target_name, false) {
            return Err(bad("target_name", quoted(&self.target_name), why));
        }
        if !is_build_id(&self.target_build_id) {
            return Err(bad(
                "target_build_id",
                quoted(&self.target_build_id),
                "a build-id is an even number of hex digits",
            ));
        }
        let hexa = |v: u64| format!("{v:#x}");
        if !self.map_start.is_multiple_of(PAGE) || self.map_start == 0 {
            return Err(bad(
                "map_start",
                hexa(self.map_start),
                "a mapping starts on a page",
            ));
        }
        if !self.map_len.is_multiple_of(PAGE) || self.map_len == 0 {
            return Err(bad(
                "map_len",
                hexa(self.map_len),
                "a mapping is whole pages",
            ));
        }
        let map_end = self.map_start.checked_add(self.map_len).ok_or_else(|| {
            bad(
                "map_len",
                hexa(self.map_len),
                "the mapping ends past the address space",
            )
        })?;
        let record_end = self.map_start.saturating_add(record_len as u64);
        if self.code_start < record_end {
            return Err(bad(
                "code_start",
                hexa(self.code_start),
                format!("the code must follow the record, which ends at {record_end:#x}"),
            ));
        }
        let code_end = self
            .code_start
            .checked_add(self.code_len)
            .filter(|&e| e <= map_end)
            .ok_or_else(|| {
                bad(
                    "code_len",
                    hexa(self.code_len),
                    format!("the code must end inside the mapping, which ends at {map_end:#x}"),
                )
            })?;
        if self.functions.len() > MAX_FUNCTIONS {
            return Err(bad(
                "number of functions",
                self.functions.len(),
                format!("a patch replaces at most {MAX_FUNCTIONS} functions"),
            ));
        }
        let mut jumps = Vec::new();
        for (i, f) in self.functions.iter().enumerate() {
            if let Some(why) = name_problem(&f.name, false) {
                return Err(bad(format!("functions[{i}].name"), quoted(&f.name), why));
            }
            let field = |name: &str| format!("functions[{i}] ({}).{name}", quoted(&f.name));
            let end = f.addr.checked_add(f.size).ok_or_else(|| {
                bad(
                    field("size"),
                    f.size,
                    format!("addr {:#x} + size overflows", f.addr),
                )
            })?;
            if f.addr < map_end && end > self.map_start {
                return Err(bad(
                    field("addr"),
                    hexa(f.addr),
                    "a replaced function cannot lie inside the patch's own mapping",
                ));
            }
            if !(self.code_start..code_end).contains(&f.new_addr) {
                return Err(bad(
                    field("new_addr"),
                    hexa(f.new_addr),
                    format!(
                        "the new code must be inside the patch's code [{:#x}, {code_end:#x})",
                        self.code_start
                    ),
                ));
            }
            if !f.jumped() {
                continue;
            }
            f.saved_bytes().map_err(|e| match e {
                RecordError::Field { value, why, .. } => bad(field("saved"), value, why),
                e => e,
            })?;
            if f.size < arch::JUMP_LEN as u64 {
                return Err(bad(
                    field("size"),
                    f.size,
                    format!(
                        "shorter than the {}-byte jump written over it",
                        arch::JUMP_LEN
                    ),
                ));
            }
            jumps.push((f.addr, i));
        }
        if let Some(u) = &self.unwind {
            let inside = |field: &str, at: u64, len: u64, lo: u64, hi: u64| {
                let end = at.checked_add(len);
                if at < lo || end.is_none_or(|e| e > hi) {
                    Err(bad(
                        format!("unwind.{field}"),
                        hexa(at),
                        format!("it must lie inside [{lo:#x}, {hi:#x}) with its {len} bytes"),
                    ))
                } else {
                    Ok(())
                }
            };
            inside(
                "eh_frame",
                u.eh_frame,
                u.eh_frame_len,
                self.code_start,
                code_end,
            )?;
            inside("thunk", u.thunk, 1, record_end, self.code_start)?;
            inside("object", u.object, 8, code_end, map_end)?;
            inside("state", u.state, 8, code_end, map_end)?;
            if !u.state.is_multiple_of(8) || !u.object.is_multiple_of(8) {
                return Err(bad("unwind.state", hexa(u.state), "not 8-byte aligned"));
            }
        }
        jumps.sort_unstable();
        for w in jumps.windows(2) {
            let ((prev, p), (addr, i)) = (w[0], w[1]);
            if addr < prev.saturating_add(arch::JUMP_LEN as u64) {
                return Err(bad(
                    format!("functions[{i}] ({}).addr", quoted(&self.functions[i].name)),
                    hexa(addr),
                    format!(
                        "its jump overlaps the jump of functions[{p}] ({}) at {prev:#x}",
                        quoted(&self.functions[p].name)
                    ),
                ));
            }
        }
        Ok(())
    }

    /// End of the patch's code (saturating: a record that passed
    /// [`AppliedRecord::validate`] never needs it).
    pub fn code_end(&self) -> u64 {
        self.code_start.saturating_add(self.code_len)
    }

    /// Whether `addr` lies in this patch's code.
    pub fn code_contains(&self, addr: u64) -> bool {
        addr >= self.code_start && addr - self.code_start < self.code_len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> AppliedRecord {
        AppliedRecord {
            patch_id: crate::PatchId::unchecked("abcd1234"),
            description: String::new(),
            target_name: "prog".into(),
            target_build_id: crate::BuildId::unchecked("ab"),
            target_bias: 0x5555_0000_0000,
            applied_at: 1,
            sequence: 2,
            tool: "t".into(),
            map_start: 0x7000_0000_0000,
            map_len: 0x3000,
            code_start: 0x7000_0000_1000,
            code_len: 0x10,
            functions: vec![AppliedFunction {
                name: "compute".into(),
                addr: 0x5555_0000_1130,
                size: 16,
                new_addr: 0x7000_0000_1000,
                saved: Some(vec![0xf3, 0x0f, 0x1e, 0xfa, 0x55]),
            }],
            running_may_finish: false,
            unwind: None,
        }
    }

    /// `h` encodes to a record that decoding refuses, naming `field`.
    fn refused(h: &AppliedRecord, field: &str) -> String {
        let msg = AppliedRecord::decode(&h.encode())
            .expect_err("decoding must refuse")
            .to_string();
        assert!(msg.contains(field), "{field:?} missing from: {msg}");
        msg
    }

    #[test]
    fn header_round_trips() {
        let h = sample();
        let b = h.encode();
        assert_eq!(AppliedRecord::decode(&b), Ok(h.clone()));
        let mut longer = b.clone();
        longer.extend_from_slice(&[0xcc; 100]);
        assert_eq!(AppliedRecord::decode(&longer), Ok(h));
        assert_eq!(AppliedRecord::decode(&b[..10]), Err(RecordError::NoMagic));
        assert!(matches!(
            AppliedRecord::decode(&b[..b.len() - 1]),
            Err(RecordError::Truncated { .. })
        ));
    }

    #[test]
    fn huge_length_is_refused_before_reading() {
        let mut prefix = IMAGE_MAGIC.to_vec();
        prefix.extend_from_slice(&u32::MAX.to_le_bytes());
        let err = AppliedRecord::record_len(&prefix).unwrap_err();
        assert_eq!(
            err,
            RecordError::TooLong {
                len: IMAGE_PREFIX_LEN as u64 + u64::from(u32::MAX),
                max: MAX_IMAGE_HEADER_LEN,
            }
        );
        assert_eq!(AppliedRecord::decode(&prefix).unwrap_err(), err);
        assert!(matches!(
            AppliedRecord::record_len(&prefix[..18]),
            Err(RecordError::Truncated { .. })
        ));
    }

    #[test]
    fn garbage_is_not_a_record() {
        let mut b = IMAGE_MAGIC.to_vec();
        b.extend_from_slice(&4u32.to_le_bytes());
        b.extend_from_slice(b"{]}x");
        assert!(matches!(
            AppliedRecord::decode(&b),
            Err(RecordError::Json(_))
        ));
    }

    /// The record of `h`, its JSON edited by `edit`.
    fn edited(h: &AppliedRecord, edit: impl FnOnce(String) -> String) -> Vec<u8> {
        let b = h.encode();
        let json = edit(String::from_utf8(b[IMAGE_PREFIX_LEN..].to_vec()).unwrap());
        let mut out = IMAGE_MAGIC.to_vec();
        out.extend_from_slice(&(json.len() as u32).to_le_bytes());
        out.extend_from_slice(json.as_bytes());
        out
    }

    #[test]
    fn saved_bytes_are_hex_in_the_record() {
        let h = sample();
        let json = String::from_utf8(h.encode()[IMAGE_PREFIX_LEN..].to_vec()).unwrap();
        assert!(json.contains(r#""saved":"f30f1efa55""#), "{json}");
        let mut none = h.clone();
        none.functions[0].saved = None;
        let json = String::from_utf8(none.encode()[IMAGE_PREFIX_LEN..].to_vec()).unwrap();
        assert!(json.contains(r#""saved":"""#), "{json}");
    }

    #[test]
    fn undecodable_or_short_saved_bytes_are_refused() {
        let mut h = sample();
        let b = edited(&h, |j| j.replace("f30f1efa55", "zz"));
        let msg = AppliedRecord::decode(&b).unwrap_err().to_string();
        assert!(
            msg.contains("saved = \"zz\": the saved bytes are not hex"),
            "{msg}"
        );
        assert_eq!(AppliedRecord::claimed_id(&b).as_deref(), Some("abcd1234"));
        h.functions[0].saved = Some(vec![0x90]);
        let msg = refused(&h, "functions[0] (\"compute\").saved = 1 byte(s)");
        assert!(msg.contains("exactly 5 bytes"), "{msg}");
        assert!(h.functions[0].saved_bytes().is_err());
    }

    #[test]
    fn function_shorter_than_its_jump_is_refused() {
        let mut h = sample();
        h.functions[0].size = 2;
        refused(&h, "functions[0] (\"compute\").size = 2");
    }

    #[test]
    fn addresses_that_overflow_or_point_astray_are_refused() {
        let mut h = sample();
        h.functions[0].addr = u64::MAX - 3;
        refused(&h, "functions[0] (\"compute\").size");
        let mut h = sample();
        h.functions[0].new_addr = 0x1000;
        refused(&h, "functions[0] (\"compute\").new_addr = 0x1000");
        let mut h = sample();
        h.functions[0].addr = h.map_start + 0x2000;
        refused(&h, "functions[0] (\"compute\").addr");
        let mut h = sample();
        h.map_len = !0xfff;
        refused(&h, "map_len");
        let mut h = sample();
        h.map_start += 1;
        refused(&h, "map_start");
        let mut h = sample();
        h.code_len = u64::MAX;
        refused(&h, "code_len");
        let mut h = sample();
        h.code_start = h.map_start + 8;
        refused(&h, "code_start");
    }

    #[test]
    fn overlapping_jumps_are_refused() {
        let mut h = sample();
        let mut g = h.functions[0].clone();
        g.name = "other".into();
        g.addr += 2;
        h.functions.push(g);
        refused(&h, "functions[1] (\"other\").addr");
    }

    #[test]
    fn bad_ids_and_names_are_refused() {
        let mut h = sample();
        h.patch_id = crate::PatchId::unchecked("../../x");
        refused(&h, "patch_id");
        let mut h = sample();
        h.functions[0].name = "\x1b]0;owned\x07".into();
        refused(&h, "functions[0].name");
        let mut h = sample();
        h.target_name = "x".repeat(5000);
        refused(&h, "target_name");
        let mut h = sample();
        h.target_build_id = crate::BuildId::unchecked("abc");
        refused(&h, "target_build_id");
    }

    #[test]
    fn function_without_a_jump_saves_nothing() {
        let mut h = sample();
        h.functions[0].saved = None;
        h.functions[0].size = 1;
        assert_eq!(AppliedRecord::decode(&h.encode()), Ok(h));
    }
}
