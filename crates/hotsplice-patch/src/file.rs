use crate::validate::{MAX_MAPPED_SIZE, MAX_META_LEN, MAX_SIGNATURE_FIELD};
use crate::{BuildId, PatchId};
pub use hotsplice_arch::FieldKind;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// First bytes of every patch file.
pub const MAGIC: &[u8; 8] = b"HSPATCH\0";
/// Format version written by this build; readers accept `1..=FORMAT_VERSION`.
pub const FORMAT_VERSION: u16 = 1;
/// Size of the fixed header that precedes the metadata.
pub const HEADER_LEN: usize = 56;
/// Magic of the optional signature block that may follow the image.
pub const SIG_MAGIC: &[u8; 8] = b"HSSIG\0\0\0";
/// Page size the image layout is aligned to.
pub const PAGE: u64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("not a hotsplice patch (bad magic); is this the file `hotsplice create` wrote?")]
    BadMagic,
    #[error("patch format version {0} is newer than this hotsplice understands ({FORMAT_VERSION}); upgrade hotsplice")]
    UnsupportedVersion(u16),
    #[error("patch file is truncated: {what} needs {need} bytes, only {have} present; copy the file again")]
    Truncated {
        what: &'static str,
        need: usize,
        have: usize,
    },
    #[error("patch file is corrupt: checksum mismatch (stored {stored}, computed {computed}); copy the file again")]
    Checksum { stored: String, computed: String },
    #[error("patch file is corrupt: metadata is not valid: {0}")]
    Meta(String),
    #[error("patch file is corrupt: {0}")]
    Invalid(String),
    #[error("patch file is corrupt: {what} is {len} bytes, more than the {max} bytes any patch may have; rebuild the patch with `hotsplice create`")]
    TooLarge {
        what: &'static str,
        len: u64,
        max: u64,
    },
    /// A field of the metadata that no patch `hotsplice create` writes can
    /// have: the patch is refused whatever signed it.
    #[error("patch {id}: {field} = {value}: {why}; rebuild the patch with `hotsplice create`")]
    InvalidField {
        /// The patch's id, quoted as found (it may itself be the bad field).
        id: String,
        field: String,
        value: String,
        why: String,
    },
}

/// What kind of ELF object a patch is for.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ObjectKind {
    /// A position-independent executable or a shared library: loaded at a
    /// bias chosen at run time.
    Relocatable,
    /// A non-PIE executable: loaded at its link-time addresses.
    Fixed,
    /// The running kernel: the image is a livepatch module (`.ko`) for the
    /// kernel's own livepatch engine; `functions` only name what it
    /// replaces.
    Kernel,
}

/// The object (executable or shared library) a patch fixes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Target {
    /// File name of the object, for people (matching is by build-id).
    pub name: String,
    /// GNU build-id, lowercase hex.
    pub build_id: BuildId,
    pub kind: ObjectKind,
}

/// Where a relocation's symbol is.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(tag = "in", rename_all = "kebab-case")]
pub enum RelocTarget {
    /// An offset inside this patch's image.
    Image { offset: u64 },
    /// A link-time address inside the target object (add its load bias).
    Object { vaddr: u64 },
    /// An IFUNC of the target object: call the resolver at this link-time
    /// address in the process and use what it returns.
    ObjectIfunc { vaddr: u64 },
    /// A symbol exported by some object of the process, looked up by name in
    /// load order at apply time (libc functions, `stderr`, ...).
    Dynamic { name: String },
    /// A constant.
    Absolute { value: u64 },
}

/// One field of the image to fill at apply time.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Relocation {
    /// Offset of the field in the image.
    pub offset: u64,
    /// What the field is and how it is computed; stored as its name
    /// (`abs64`, `abs32`, `abs32s`, `pc32` or `pc64`).
    #[serde(with = "field_kind")]
    pub kind: FieldKind,
    pub target: RelocTarget,
    pub addend: i64,
}

/// [`FieldKind`] as the format stores it: its name.
mod field_kind {
    use super::FieldKind;
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(k: &FieldKind, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(k.name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<FieldKind, D::Error> {
        let name = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        FieldKind::from_name(&name).ok_or_else(|| {
            let known: Vec<&str> = FieldKind::ALL.iter().map(|k| k.name()).collect();
            D::Error::custom(format!(
                "unknown relocation kind {:?}: known kinds are {}",
                crate::validate::quoted(&name),
                known.join(", ")
            ))
        })
    }
}

/// A function of the target replaced by new code.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Function {
    pub name: String,
    /// Source file the function comes from (tells same-named `static`s apart).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// Link-time address and size of the original function in the target.
    pub vaddr: u64,
    pub size: u64,
    /// What the original code must be, hex; bytes where `mask` is 00 are
    /// written by the linker (relocations) and not compared.
    pub expected: String,
    pub mask: String,
    /// Offset of the replacement in the image.
    pub replacement: u64,
    /// Whether a jump is written over the entry. False for parts that are
    /// only reached from their parent (`foo.cold`): those are still checked
    /// for threads inside them.
    pub jump: bool,
}

impl Function {
    /// A function of a kernel patch: the name alone, the livepatch module
    /// in the image carries the code and finds the original.
    pub fn kernel(name: impl Into<String>) -> Function {
        Function {
            name: name.into(),
            file: None,
            vaddr: 0,
            size: 0,
            expected: String::new(),
            mask: String::new(),
            replacement: 0,
            jump: false,
        }
    }
}

/// A symbol the patch adds (new function or data), for `info` and debugging.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NewSymbol {
    pub name: String,
    pub offset: u64,
    pub size: u64,
    pub kind: String,
}

/// Everything about a patch except its code and data bytes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PatchMeta {
    pub id: PatchId,
    #[serde(default)]
    pub description: String,
    /// Order among patches for the same target: a higher level replaces a
    /// lower one (patches are cumulative, built from the original source).
    #[serde(default = "default_level")]
    pub level: u32,
    /// CVE identifiers the patch fixes (`CVE-YYYY-NNNN…`), for the fleet
    /// server's search and reports; see [`is_cve_id`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cves: Vec<String>,
    /// hotsplice version that wrote the patch.
    pub tool: String,
    pub target: Target,
    /// Bytes `[0, code_size)` of the image are code and read-only data
    /// (mapped read+execute); data starts at `data_offset` (page aligned) and
    /// spans `data_size` bytes (mapped read+write); bytes past the end of the
    /// stored image are zero.
    pub code_size: u64,
    pub data_offset: u64,
    pub data_size: u64,
    pub functions: Vec<Function>,
    pub relocations: Vec<Relocation>,
    #[serde(default)]
    pub symbols: Vec<NewSymbol>,
    /// Unwind information for the new code: `.eh_frame` entries (CIEs and
    /// FDEs, ending with a zero terminator) at `[offset, offset + size)` of
    /// the code part of the image, relocated like the code. Absent in
    /// patches from before it was carried (their code has none) and in
    /// kernel patches; readers that do not know it apply the patch without
    /// it, as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eh_frame: Option<EhFrame>,
}

/// Where a patch's unwind information lies in its image.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct EhFrame {
    pub offset: u64,
    pub size: u64,
}

fn default_level() -> u32 {
    1
}

/// The CVE identifiers named in `text` (a description such as
/// "CVE-2024-1234: fix the length check"), each once, in order.
pub fn cves_in(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-')) {
        let w = word.trim_matches('-');
        if is_cve_id(w) && !out.iter().any(|o| o == w) && out.len() < MAX_CVES {
            out.push(w.to_string());
        }
    }
    out
}

/// At most this many CVEs per patch.
pub const MAX_CVES: usize = 64;

/// `CVE-YYYY-N…`: four digits of year, then four to nine digits.
pub fn is_cve_id(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("CVE-") else {
        return false;
    };
    let Some((year, num)) = rest.split_once('-') else {
        return false;
    };
    year.len() == 4
        && (4..=9).contains(&num.len())
        && year.bytes().chain(num.bytes()).all(|b| b.is_ascii_digit())
}

impl PatchMeta {
    /// A small valid metadata record, for examples and tests.
    pub fn example() -> Self {
        PatchMeta {
            id: PatchId::unchecked("abcd1234"),
            description: "example".into(),
            level: 1,
            cves: vec![],
            tool: concat!("hotsplice ", env!("CARGO_PKG_VERSION")).into(),
            target: Target {
                name: "prog".into(),
                build_id: BuildId::unchecked("00"),
                kind: ObjectKind::Relocatable,
            },
            code_size: 1,
            data_offset: PAGE,
            data_size: 0,
            functions: vec![],
            relocations: vec![],
            symbols: vec![],
            eh_frame: None,
        }
    }

    /// Total bytes the image occupies once mapped (rounded to pages);
    /// `u64::MAX` for a layout that overflows (which validation refuses).
    pub fn mapped_size(&self) -> u64 {
        self.data_offset
            .checked_add(self.data_size)
            .and_then(|end| checked_round_up(end, PAGE))
            .unwrap_or(u64::MAX)
    }

    /// Bytes `apply` reserves in front of the image for the record it
    /// leaves in the process ([`crate::AppliedRecord`]), rounded to pages.
    pub fn header_room(&self) -> u64 {
        let names = self
            .functions
            .iter()
            .fold(0usize, |n, f| n.saturating_add(160 + f.name.len()));
        let len = (crate::IMAGE_PREFIX_LEN + 512 + UNWIND_RECORD_ROOM)
            .saturating_add(names)
            .saturating_add(self.target.name.len())
            .saturating_add(self.description.len())
            .saturating_add(self.target.build_id.len());
        checked_round_up(len as u64, PAGE).unwrap_or(u64::MAX)
    }
}

/// Room the record of a patch with unwind information needs for that (its
/// `unwind` field), and the registration thunk at the end of the room.
const UNWIND_RECORD_ROOM: usize = 256;

/// A signature over the signed part of a patch file (header, metadata and
/// image). The format reserves it; verification is the caller's business.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    /// Algorithm name, e.g. `ed25519`.
    pub algorithm: String,
    /// Which key signed (e.g. the public key's fingerprint).
    pub key_id: String,
    pub bytes: Vec<u8>,
}

/// A parsed patch file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Patch {
    pub meta: PatchMeta,
    /// Code, read-only data, then initialized data (see [`PatchMeta`]).
    pub image: Vec<u8>,
}

/// A patch as read from disk: the patch, the bytes a signature covers, and
/// the signature if present.
#[derive(Debug, Clone)]
pub struct PatchFile {
    pub patch: Patch,
    pub signed_bytes: Vec<u8>,
    pub signature: Option<Signature>,
}

pub fn round_up(v: u64, align: u64) -> u64 {
    if align <= 1 {
        v
    } else {
        v.div_ceil(align) * align
    }
}

/// [`round_up`], `None` where the result does not fit a `u64`.
pub fn checked_round_up(v: u64, align: u64) -> Option<u64> {
    if align <= 1 {
        Some(v)
    } else {
        v.div_ceil(align).checked_mul(align)
    }
}

impl Patch {
    /// Serialize without a signature.
    pub fn to_bytes(&self) -> Vec<u8> {
        let meta = serde_json::to_vec_pretty(&self.meta).expect("metadata serializes");
        let mut h = Sha256::new();
        h.update(&meta);
        h.update(&self.image);
        let sum = h.finalize();
        let mut out = Vec::with_capacity(HEADER_LEN + meta.len() + self.image.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&(meta.len() as u32).to_le_bytes());
        out.extend_from_slice(&(self.image.len() as u64).to_le_bytes());
        out.extend_from_slice(&sum);
        out.extend_from_slice(&meta);
        out.extend_from_slice(&self.image);
        out
    }

    /// Parse and check a patch file, ignoring any signature block.
    pub fn from_bytes(bytes: &[u8]) -> Result<Patch, FormatError> {
        Ok(PatchFile::parse(bytes)?.patch)
    }
}

impl PatchFile {
    /// Parse and check a patch file (magic, version, lengths, checksum,
    /// metadata consistency); the signature block, if any, is returned as is.
    pub fn parse(bytes: &[u8]) -> Result<PatchFile, FormatError> {
        if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
            return Err(FormatError::BadMagic);
        }
        if bytes.len() < HEADER_LEN {
            return Err(FormatError::Truncated {
                what: "header",
                need: HEADER_LEN,
                have: bytes.len(),
            });
        }
        let version = u16::from_le_bytes([bytes[8], bytes[9]]);
        if version == 0 {
            // Not newer: no hotsplice ever wrote version 0.
            return Err(FormatError::Invalid(
                "format version 0 is not a valid version (versions start at 1): the header is damaged; copy the file again".into(),
            ));
        }
        if version > FORMAT_VERSION {
            return Err(FormatError::UnsupportedVersion(version));
        }
        let meta_len = u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize;
        if meta_len > MAX_META_LEN {
            return Err(FormatError::TooLarge {
                what: "the metadata",
                len: meta_len as u64,
                max: MAX_META_LEN as u64,
            });
        }
        let image_len = u64::from_le_bytes(bytes[16..24].try_into().unwrap());
        if image_len > MAX_MAPPED_SIZE {
            return Err(FormatError::TooLarge {
                what: "the image",
                len: image_len,
                max: MAX_MAPPED_SIZE,
            });
        }
        let image_len = usize::try_from(image_len)
            .map_err(|_| FormatError::Invalid("image length overflows".into()))?;
        let body_end = HEADER_LEN
            .checked_add(meta_len)
            .and_then(|v| v.checked_add(image_len))
            .ok_or_else(|| FormatError::Invalid("lengths overflow".into()))?;
        if bytes.len() < body_end {
            return Err(FormatError::Truncated {
                what: "metadata and image",
                need: body_end,
                have: bytes.len(),
            });
        }
        let meta_bytes = &bytes[HEADER_LEN..HEADER_LEN + meta_len];
        let image = &bytes[HEADER_LEN + meta_len..body_end];
        let mut h = Sha256::new();
        h.update(meta_bytes);
        h.update(image);
        let computed = h.finalize();
        if computed.as_slice() != &bytes[24..56] {
            return Err(FormatError::Checksum {
                stored: hex::encode(&bytes[24..56]),
                computed: hex::encode(computed),
            });
        }
        let meta: PatchMeta =
            serde_json::from_slice(meta_bytes).map_err(|e| FormatError::Meta(e.to_string()))?;
        let patch = Patch {
            meta,
            image: image.to_vec(),
        };
        patch.validate()?;
        let signature = parse_signature(&bytes[body_end..])?;
        Ok(PatchFile {
            patch,
            signed_bytes: bytes[..body_end].to_vec(),
            signature,
        })
    }

    /// The file with `sig` appended (replacing any previous signature).
    pub fn with_signature(&self, sig: &Signature) -> Vec<u8> {
        let mut out = self.signed_bytes.clone();
        out.extend_from_slice(SIG_MAGIC);
        for field in [sig.algorithm.as_bytes(), sig.key_id.as_bytes(), &sig.bytes] {
            out.extend_from_slice(&(field.len() as u32).to_le_bytes());
            out.extend_from_slice(field);
        }
        out
    }
}

fn parse_signature(rest: &[u8]) -> Result<Option<Signature>, FormatError> {
    if rest.is_empty() {
        return Ok(None);
    }
    if rest.len() < SIG_MAGIC.len() || &rest[..SIG_MAGIC.len()] != SIG_MAGIC {
        return Err(FormatError::Invalid(format!(
            "{} unexpected bytes after the image",
            rest.len()
        )));
    }
    let mut pos = SIG_MAGIC.len();
    let mut fields = Vec::new();
    for what in ["signature algorithm", "signature key id", "signature"] {
        let len_bytes = rest.get(pos..pos + 4).ok_or(FormatError::Truncated {
            what,
            need: pos + 4,
            have: rest.len(),
        })?;
        let len = u32::from_le_bytes(len_bytes.try_into().unwrap()) as usize;
        pos += 4;
        if len > MAX_SIGNATURE_FIELD {
            return Err(FormatError::TooLarge {
                what,
                len: len as u64,
                max: MAX_SIGNATURE_FIELD as u64,
            });
        }
        let field = rest.get(pos..pos + len).ok_or(FormatError::Truncated {
            what,
            need: pos + len,
            have: rest.len(),
        })?;
        fields.push(field.to_vec());
        pos += len;
    }
    if pos != rest.len() {
        return Err(FormatError::Invalid("bytes after the signature".into()));
    }
    let text = |b: &[u8]| {
        String::from_utf8(b.to_vec()).map_err(|_| FormatError::Invalid("signature text".into()))
    };
    Ok(Some(Signature {
        algorithm: text(&fields[0])?,
        key_id: text(&fields[1])?,
        bytes: fields[2].clone(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Patch {
        Patch {
            meta: PatchMeta::example(),
            image: vec![0xc3],
        }
    }

    #[test]
    fn round_trip() {
        let p = sample();
        assert_eq!(Patch::from_bytes(&p.to_bytes()).unwrap(), p);
    }

    #[test]
    fn flipped_byte_is_a_checksum_error() {
        let mut b = sample().to_bytes();
        let n = b.len();
        b[n - 1] ^= 1;
        assert!(matches!(
            Patch::from_bytes(&b),
            Err(FormatError::Checksum { .. })
        ));
    }

    #[test]
    fn truncation_is_reported() {
        let b = sample().to_bytes();
        for cut in [10, 60, b.len() - 1] {
            let err = Patch::from_bytes(&b[..cut]).unwrap_err();
            assert!(matches!(err, FormatError::Truncated { .. }), "{cut}: {err}");
        }
    }

    #[test]
    fn signature_block_round_trips() {
        let b = sample().to_bytes();
        let f = PatchFile::parse(&b).unwrap();
        let sig = Signature {
            algorithm: "ed25519".into(),
            key_id: "k1".into(),
            bytes: vec![1, 2, 3],
        };
        let signed = f.with_signature(&sig);
        let g = PatchFile::parse(&signed).unwrap();
        assert_eq!(g.signature, Some(sig));
        assert_eq!(g.signed_bytes, b);
    }

    #[test]
    fn newer_version_is_refused() {
        let mut b = sample().to_bytes();
        b[8] = 99;
        assert!(matches!(
            Patch::from_bytes(&b),
            Err(FormatError::UnsupportedVersion(99))
        ));
    }
}
