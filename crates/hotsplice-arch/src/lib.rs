//! Everything hotsplice knows about the instruction set lives here: how a
//! jump is encoded, which ELF relocation types exist and how their fields are
//! computed, and how instructions are decoded. Other crates call
//! [`current`] and never match on architecture themselves.
//!
//! ```
//! use hotsplice_arch::current as arch;
//! let jmp = arch::encode_jump(0x1000, 0x2000).unwrap();
//! assert_eq!(arch::decode_jump(&jmp, 0x1000), Some(0x2000));
//! ```

pub mod x86_64;

/// The architecture hotsplice is built for.
pub use x86_64 as current;

/// A relocation as the patch format stores it, independent of ELF numbering:
/// what to write, where, computed how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    /// 64-bit absolute address (S + A).
    Abs64,
    /// 32-bit absolute address, zero-extended (S + A must fit in u32).
    Abs32,
    /// 32-bit absolute address, sign-extended (S + A must fit in i32).
    Abs32S,
    /// 32-bit PC-relative (S + A - P must fit in i32).
    Pc32,
    /// 64-bit PC-relative (S + A - P).
    Pc64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FieldError {
    #[error("value {value:#x} does not fit a {kind:?} field")]
    Overflow { kind: FieldKind, value: i128 },
    #[error("field of {kind:?} at offset {offset:#x} lies outside the buffer")]
    OutOfBounds { kind: FieldKind, offset: usize },
}

impl FieldKind {
    /// Every kind, in the order of [`FieldKind::name`]'s list.
    pub const ALL: [FieldKind; 5] = [
        FieldKind::Abs64,
        FieldKind::Abs32,
        FieldKind::Abs32S,
        FieldKind::Pc32,
        FieldKind::Pc64,
    ];

    /// Bytes of the field: the one size table of the patch format.
    pub fn size(self) -> usize {
        match self {
            FieldKind::Abs64 | FieldKind::Pc64 => 8,
            _ => 4,
        }
    }

    /// The name the patch format stores (`abs64`, `abs32`, `abs32s`,
    /// `pc32`, `pc64`).
    pub fn name(self) -> &'static str {
        match self {
            FieldKind::Abs64 => "abs64",
            FieldKind::Abs32 => "abs32",
            FieldKind::Abs32S => "abs32s",
            FieldKind::Pc32 => "pc32",
            FieldKind::Pc64 => "pc64",
        }
    }

    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == s)
    }

    /// Compute and store the field at `buf[offset..]`, where the field will
    /// live at address `place`, for symbol address `sym` and `addend`.
    pub fn write(
        self,
        buf: &mut [u8],
        offset: usize,
        place: u64,
        sym: u64,
        addend: i64,
    ) -> Result<(), FieldError> {
        let size = self.size();
        if offset.checked_add(size).is_none_or(|end| end > buf.len()) {
            return Err(FieldError::OutOfBounds { kind: self, offset });
        }
        // Computed modulo 2^64 as linkers do, then checked for the field.
        let value = match self {
            FieldKind::Abs64 | FieldKind::Abs32 | FieldKind::Abs32S => {
                sym.wrapping_add(addend as u64)
            }
            FieldKind::Pc32 | FieldKind::Pc64 => {
                sym.wrapping_add(addend as u64).wrapping_sub(place)
            }
        };
        let fits = match self {
            FieldKind::Abs64 | FieldKind::Pc64 => true,
            FieldKind::Abs32 => value <= u32::MAX as u64,
            FieldKind::Abs32S | FieldKind::Pc32 => i32::try_from(value as i64).is_ok(),
        };
        if !fits {
            return Err(FieldError::Overflow {
                kind: self,
                value: value as i64 as i128,
            });
        }
        let bytes = value.to_le_bytes();
        buf[offset..offset + size].copy_from_slice(&bytes[..size]);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pc32_field_is_relative_to_place() {
        let mut buf = [0u8; 8];
        FieldKind::Pc32
            .write(&mut buf, 2, 0x1002, 0x2000, -4)
            .unwrap();
        assert_eq!(
            i32::from_le_bytes(buf[2..6].try_into().unwrap()),
            0x2000 - 4 - 0x1002
        );
    }

    #[test]
    fn overflowing_pc32_is_refused() {
        let mut buf = [0u8; 4];
        let err = FieldKind::Pc32
            .write(&mut buf, 0, 0, 1 << 40, 0)
            .unwrap_err();
        assert!(matches!(err, FieldError::Overflow { .. }));
    }

    #[test]
    fn names_round_trip() {
        for k in FieldKind::ALL {
            assert_eq!(FieldKind::from_name(k.name()), Some(k));
        }
        assert_eq!(FieldKind::from_name("got32"), None);
    }

    #[test]
    fn field_past_end_is_refused() {
        let mut buf = [0u8; 4];
        assert!(FieldKind::Abs64.write(&mut buf, 0, 0, 0, 0).is_err());
    }
}
