//! Turning the changed sections of some objects into a patch for one linked
//! target: choose what to carry (changed code and what only it needs),
//! resolve every reference against the target, lay out the image.

use crate::diff::ObjDiff;
use crate::objfile::{ObjFile, Reloc};
use crate::CreateError;
use hotsplice_arch::current::{self as arch, ElfReloc};
use hotsplice_arch::FieldKind;
use hotsplice_elf::{LinkedElf, SymKind, TlsGot};
use hotsplice_patch::{
    round_up, BuildId, EhFrame, Function, NewSymbol, ObjectKind, Patch, PatchId, PatchMeta,
    RelocTarget, Relocation, Target, PAGE,
};
use std::collections::HashMap;

/// One object linked into the target, built before and after the fix.
pub struct ObjPair {
    pub pre: ObjFile,
    pub post: ObjFile,
    pub diff: ObjDiff,
}

/// The linked object being patched.
pub struct TargetElf<'a> {
    pub name: String,
    pub elf: &'a LinkedElf,
    pub data: &'a [u8],
    /// Set when the target is stripped and its symbols are only those of
    /// `.dynsym`: what was looked for, for the message when a changed
    /// function is not among them.
    pub exported_only: Option<String>,
}

type SecKey = (usize, usize);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Tgt {
    /// Offset in an included section.
    Sec(SecKey, u64),
    Stub(usize),
    Slot(usize),
    Final(RelocTarget),
}

/// Where a relocation's field is: in an included section, or in the
/// patch's unwind information (offset from its start).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum At {
    Sec(SecKey),
    EhFrame,
}

struct PendingReloc {
    at: At,
    offset: u64,
    kind: FieldKind,
    target: Tgt,
    addend: i64,
}

struct Emitter<'a> {
    objs: &'a [ObjPair],
    target: &'a TargetElf<'a>,
    included: Vec<SecKey>,
    is_included: HashMap<SecKey, ()>,
    slots: Vec<Tgt>,
    slot_of: HashMap<Tgt, usize>,
    stubs: Vec<usize>,
    stub_of: HashMap<usize, usize>,
    relocs: Vec<PendingReloc>,
}

impl<'a> Emitter<'a> {
    fn include(&mut self, key: SecKey) {
        if self.is_included.insert(key, ()).is_none() {
            self.included.push(key);
        }
    }

    fn slot(&mut self, t: Tgt) -> usize {
        if let Some(&i) = self.slot_of.get(&t) {
            return i;
        }
        self.slots.push(t.clone());
        self.slot_of.insert(t, self.slots.len() - 1);
        self.slots.len() - 1
    }

    fn stub(&mut self, t: Tgt) -> usize {
        let slot = self.slot(t);
        if let Some(&i) = self.stub_of.get(&slot) {
            return i;
        }
        self.stubs.push(slot);
        self.stub_of.insert(slot, self.stubs.len() - 1);
        self.stubs.len() - 1
    }

    fn obj(&self, o: usize) -> &'a ObjFile {
        &self.objs[o].post
    }

    fn file_of(&self, o: usize) -> Option<&'a str> {
        self.objs[o].post.source.as_deref()
    }

    /// Address in the target of symbol `name` from object `o`.
    fn target_symbol(&self, o: usize, name: &str) -> Option<&'a hotsplice_elf::Sym> {
        self.target
            .elf
            .lookup(name, self.file_of(o), &self.target.name)
            .ok()
    }

    fn object_target(sym: &hotsplice_elf::Sym, delta: i64) -> Tgt {
        let vaddr = (sym.value as i64 + delta) as u64;
        if sym.kind == SymKind::Ifunc {
            Tgt::Final(RelocTarget::ObjectIfunc { vaddr })
        } else {
            Tgt::Final(RelocTarget::Object { vaddr })
        }
    }

    /// What the symbol of relocation `r` (in section `sec` of object `o`)
    /// is, deciding on the way which further sections the patch carries.
    fn resolve(&mut self, o: usize, sec: usize, r: &Reloc) -> Result<Tgt, CreateError> {
        let obj = self.obj(o);
        let sym = &obj.symbols[r.sym];
        if sym.undefined {
            // Defined by another object of the target: exported, or made
            // local by a version script (then known by its address only).
            let elf = self.target.elf;
            let defined = elf
                .symbols
                .iter()
                .find(|s| s.defined && !s.local && s.name == sym.name)
                .or_else(|| elf.former_global(&sym.name));
            return Ok(match defined {
                Some(s) => Self::object_target(s, 0),
                None => Tgt::Final(RelocTarget::Dynamic {
                    name: sym.name.clone(),
                }),
            });
        }
        let Some(loc) = obj.locate(sec, r) else {
            return Err(CreateError::Unsupported(format!(
                "{}: relocation at {:#x} in {} refers to an absolute symbol `{}`",
                obj.path.display(),
                r.offset,
                obj.sections[sec].name,
                sym.name
            )));
        };
        let t = loc.section;
        let key = (o, t);
        if self.is_included.contains_key(&key) {
            return Ok(Tgt::Sec(key, loc.sym_offset));
        }
        let s = &obj.sections[t];
        let pair = &self.objs[o];
        if s.tls {
            return Err(CreateError::Unsupported(format!(
                "{}: non-TLS access to thread-local data in {}",
                obj.path.display(),
                s.name
            )));
        }
        let numbered = obj
            .symbol_at(t, loc.referenced)
            .is_some_and(|i| obj.is_numbered_const(i));
        if s.merge || s.symbols.is_empty() || numbered || pair.diff.new_sections.contains(&t) {
            self.include(key);
            return Ok(Tgt::Sec(key, loc.sym_offset));
        }
        let anchor = obj
            .symbol_at(t, loc.referenced)
            .or_else(|| s.symbols.first().copied())
            .expect("section has symbols");
        let anchor_sym = &obj.symbols[anchor];
        if s.exec {
            if pair.diff.changed_text.contains(&t) {
                self.include(key);
                return Ok(Tgt::Sec(key, loc.sym_offset));
            }
            return Ok(match self.target_symbol(o, &anchor_sym.name) {
                Some(ts) => {
                    Self::object_target(ts, loc.sym_offset as i64 - anchor_sym.value as i64)
                }
                None => {
                    // Not in the target (inlined everywhere there): carry a copy.
                    self.include(key);
                    Tgt::Sec(key, loc.sym_offset)
                }
            });
        }
        if let Some((_, name)) = pair.diff.changed_data.iter().find(|(ds, _)| *ds == t) {
            return Err(CreateError::ChangedData {
                symbol: name.clone(),
                file: obj.source.clone().unwrap_or_default(),
            });
        }
        match self.target_symbol(o, &anchor_sym.name) {
            Some(ts) => Ok(Self::object_target(
                ts,
                loc.sym_offset as i64 - anchor_sym.value as i64,
            )),
            None if !s.write => {
                self.include(key);
                Ok(Tgt::Sec(key, loc.sym_offset))
            }
            None => match &self.target.exported_only {
                Some(looked) => Err(CreateError::Target(format!(
                    "the target {} is stripped and no symbols were found for `{}`, which the new code uses ({looked}); install its debug symbols (the -dbg/-dbgsym package) or build exactly what was installed",
                    self.target.name, anchor_sym.name
                ))),
                None => Err(CreateError::MissingSymbol {
                    symbol: anchor_sym.name.clone(),
                    target: self.target.name.clone(),
                }),
            },
        }
    }

    /// The target's thread-local symbol a TLS relocation refers to.
    fn tls_symbol(&self, o: usize, r: &Reloc) -> Result<(String, i64), CreateError> {
        let obj = self.obj(o);
        let sym = &obj.symbols[r.sym];
        if !sym.is_section() && !sym.is_label() {
            return Ok((sym.name.clone(), r.addend));
        }
        let sec = sym.section.ok_or_else(|| {
            CreateError::Unsupported(format!(
                "{}: TLS relocation without symbol",
                obj.path.display()
            ))
        })?;
        let at = sym.value as i64 + r.addend;
        let anchor = obj.symbol_at(sec, at).ok_or_else(|| {
            CreateError::Unsupported(format!(
                "{}: TLS reference into {} matches no variable",
                obj.path.display(),
                obj.sections[sec].name
            ))
        })?;
        let a = &obj.symbols[anchor];
        Ok((a.name.clone(), at - a.value as i64))
    }

    fn target_tls(&self, o: usize, name: &str) -> Result<&'a hotsplice_elf::Sym, CreateError> {
        match self.target_symbol(o, name) {
            Some(s) if s.kind == SymKind::Tls => Ok(s),
            _ => Err(CreateError::Unsupported(format!(
                "thread-local variable `{name}` is not defined in {} (new __thread variables cannot be added by a live patch)",
                self.target.name
            ))),
        }
    }

    fn tls_got(&self, want: impl Fn(&TlsGot) -> bool) -> Option<u64> {
        self.target
            .elf
            .tls_got
            .iter()
            .find(|g| want(g))
            .map(|g| match g {
                TlsGot::ModuleId { got, .. }
                | TlsGot::TpOffset { got, .. }
                | TlsGot::OwnTpOffset { got, .. } => *got,
            })
    }

    /// The offset from the thread pointer of the target's TLS variable
    /// `name`, if the target is an executable (the static TLS models).
    fn exec_tpoff(&self, o: usize, name: &str) -> Result<Option<i64>, CreateError> {
        let ts = self.target_tls(o, name)?;
        Ok(self
            .target
            .elf
            .exec_tpoff(ts)
            .filter(|_| self.target.elf.executable))
    }

    /// `r` PC-relative to the target's GOT entry at `got`.
    fn push_got(&mut self, at: At, r: &Reloc, got: u64) {
        let target = Tgt::Final(RelocTarget::Object { vaddr: got });
        self.push(at, r.offset, FieldKind::Pc32, target, r.addend);
    }

    fn push(&mut self, at: At, offset: u64, kind: FieldKind, target: Tgt, addend: i64) {
        self.relocs.push(PendingReloc {
            at,
            offset,
            kind,
            target,
            addend,
        });
    }

    fn process(&mut self, key: SecKey) -> Result<(), CreateError> {
        let (o, sec) = key;
        let relocs = &self.obj(o).sections[sec].relocs;
        self.process_relocs(o, sec, relocs, At::Sec(key))
    }

    /// Resolve relocations `relocs` of section `sec` of object `o`, whose
    /// fields are at `key`.
    fn process_relocs(
        &mut self,
        o: usize,
        sec: usize,
        relocs: &[Reloc],
        key: At,
    ) -> Result<(), CreateError> {
        let obj = self.obj(o);
        for r in relocs {
            let no_got = |what: &str, name: &str| {
                CreateError::Unsupported(format!(
                    "{what} access to `{name}` needs a GOT entry that {} lacks",
                    self.target.name
                ))
            };
            match r.kind {
                ElfReloc::None => {}
                ElfReloc::TpOff32 => {
                    let (name, add) = self.tls_symbol(o, r)?;
                    let tpoff = self.exec_tpoff(o, &name)?.ok_or_else(|| {
                        CreateError::Unsupported(format!(
                            "local-exec TLS access to `{name}` outside an executable"
                        ))
                    })?;
                    let value = Tgt::Final(RelocTarget::Absolute {
                        value: tpoff as u64,
                    });
                    self.push(key, r.offset, FieldKind::Abs32S, value, add);
                }
                ElfReloc::DtpOff32 | ElfReloc::DtpOff64 => {
                    let (name, add) = self.tls_symbol(o, r)?;
                    let ts = self.target_tls(o, &name)?;
                    let kind = if r.kind == ElfReloc::DtpOff32 {
                        FieldKind::Abs32S
                    } else {
                        FieldKind::Abs64
                    };
                    let off = ts.value;
                    self.push(
                        key,
                        r.offset,
                        kind,
                        Tgt::Final(RelocTarget::Absolute { value: off }),
                        add,
                    );
                }
                ElfReloc::GotTpOff => {
                    let (name, _) = self.tls_symbol(o, r)?;
                    // A variable of the target's own: by name, or (local or
                    // hidden, as glibc's `__libc_errno`) by its offset in
                    // the target's TLS block.
                    let own = self.target_tls(o, &name).ok().map(|s| s.value);
                    let target = if let Some(got) = self.tls_got(|g| match g {
                        TlsGot::TpOffset { symbol, .. } => *symbol == name,
                        TlsGot::OwnTpOffset { offset, .. } => Some(*offset) == own,
                        _ => false,
                    }) {
                        Tgt::Final(RelocTarget::Object { vaddr: got })
                    } else {
                        let tpoff = self
                            .exec_tpoff(o, &name)?
                            .ok_or_else(|| no_got("initial-exec TLS", &name))?;
                        let slot = self.slot(Tgt::Final(RelocTarget::Absolute {
                            value: tpoff as u64,
                        }));
                        Tgt::Slot(slot)
                    };
                    self.push(key, r.offset, FieldKind::Pc32, target, r.addend);
                }
                ElfReloc::TlsGd => {
                    let (name, _) = self.tls_symbol(o, r)?;
                    let got = self
                        .tls_got(
                            |g| matches!(g, TlsGot::ModuleId { symbol: Some(s), .. } if *s == name),
                        )
                        .ok_or_else(|| no_got("general-dynamic TLS", &name))?;
                    self.push_got(key, r, got);
                }
                ElfReloc::TlsLd => {
                    let got = self
                        .tls_got(|g| matches!(g, TlsGot::ModuleId { symbol: None, .. }))
                        .ok_or_else(|| no_got("local-dynamic TLS", "module"))?;
                    self.push_got(key, r, got);
                }
                ElfReloc::GotPcRel { .. } => {
                    let t = self.resolve(o, sec, r)?;
                    let slot = self.slot(t);
                    self.push(key, r.offset, FieldKind::Pc32, Tgt::Slot(slot), r.addend);
                }
                ElfReloc::Plt32 => {
                    let t = self.resolve(o, sec, r)?;
                    let t = match t {
                        Tgt::Final(
                            RelocTarget::Dynamic { .. } | RelocTarget::ObjectIfunc { .. },
                        ) => Tgt::Stub(self.stub(t)),
                        other => other,
                    };
                    self.push(key, r.offset, FieldKind::Pc32, t, r.addend);
                }
                ElfReloc::Other(n) => {
                    return Err(CreateError::Unsupported(format!(
                        "{}: relocation type {n} in {} is not supported",
                        obj.path.display(),
                        obj.sections[sec].name
                    )))
                }
                plain => {
                    let kind = plain.plain_field().expect("plain relocation");
                    let personality = obj.symbols[r.sym]
                        .name
                        .strip_prefix("DW.ref.")
                        .filter(|_| key == At::EhFrame);
                    let t = match personality {
                        // A CIE's personality routine, through the
                        // compiler's pointer to it: a slot of our own. The
                        // target's own copy if it has one (glibc links
                        // libgcc's `__gcc_personality_v0` in, hidden),
                        // else the one the process exports.
                        Some(name) => {
                            let own = self
                                .target
                                .elf
                                .lookup(name, None, &self.target.name)
                                .ok()
                                .filter(|s| s.kind == SymKind::Func);
                            let routine = match own {
                                Some(s) => Self::object_target(s, 0),
                                None => Tgt::Final(RelocTarget::Dynamic {
                                    name: name.to_string(),
                                }),
                            };
                            Tgt::Slot(self.slot(routine))
                        }
                        None => self.resolve(o, sec, r)?,
                    };
                    self.push(key, r.offset, kind, t, r.addend);
                }
            }
        }
        Ok(())
    }
}

/// Checks that the target's function at `ts` is `pre`, the code built
/// from the source (bytes a linker may rewrite for relocations masked);
/// returns that mask.
pub fn check_code(
    pre: &crate::objfile::Section,
    target: &TargetElf<'_>,
    ts: &hotsplice_elf::Sym,
    name: &str,
) -> Result<Vec<u8>, CreateError> {
    let mut mask = vec![0xffu8; pre.data.len()];
    for r in &pre.relocs {
        let (a, b) = r.kind.linker_written();
        let start = (r.offset as i64 + a).max(0) as usize;
        let end = ((r.offset as i64 + b).max(0) as usize).min(mask.len());
        if start < end {
            mask[start..end].fill(0);
        }
    }
    let size = ts.size;
    if size != pre.data.len() as u64 {
        return Err(CreateError::TargetMismatch {
            function: name.into(),
            target: target.name.clone(),
            detail: format!(
                "it is {size} bytes in the target but {} bytes when built from the source",
                pre.data.len()
            ),
        });
    }
    let running = target
        .elf
        .read_vaddr(target.data, ts.value, size)
        .ok_or_else(|| CreateError::TargetMismatch {
            function: name.into(),
            target: target.name.clone(),
            detail: "its code is not in the file".into(),
        })?;
    if let Some(off) = (0..pre.data.len()).find(|&i| mask[i] != 0 && pre.data[i] != running[i]) {
        return Err(CreateError::TargetMismatch {
            function: name.into(),
            target: target.name.clone(),
            detail: format!(
                "its code differs at byte {off:#x} from the code built from the source"
            ),
        });
    }
    Ok(mask)
}

/// Build the patch for one target from the objects that changed in it.
pub fn emit(
    objs: &[ObjPair],
    target: &TargetElf<'_>,
    id: PatchId,
    description: String,
) -> Result<Patch, CreateError> {
    let mut e = Emitter {
        objs,
        target,
        included: Vec::new(),
        is_included: HashMap::new(),
        slots: Vec::new(),
        slot_of: HashMap::new(),
        stubs: Vec::new(),
        stub_of: HashMap::new(),
        relocs: Vec::new(),
    };
    for (o, pair) in objs.iter().enumerate() {
        if let Some((_, name)) = pair.diff.changed_data.first() {
            return Err(CreateError::ChangedData {
                symbol: name.clone(),
                file: pair.post.source.clone().unwrap_or_default(),
            });
        }
        for &s in &pair.diff.changed_text {
            e.include((o, s));
        }
    }
    // What the code needs, then the unwind information of the code (whose
    // language-specific data may need more), until nothing is added.
    let mut next = 0;
    let mut eh_frame: Vec<u8> = Vec::new();
    let mut unwound: Vec<SecKey> = Vec::new();
    loop {
        while next < e.included.len() {
            let key = e.included[next];
            e.process(key)?;
            next += 1;
        }
        for (o, pair) in objs.iter().enumerate() {
            let want: Vec<usize> = e
                .included
                .iter()
                .filter(|k| k.0 == o && pair.post.sections[k.1].exec && !unwound.contains(k))
                .map(|k| k.1)
                .collect();
            if want.is_empty() {
                continue;
            }
            unwound.extend(want.iter().map(|&s| (o, s)));
            let Some(x) = crate::ehframe::extract(&pair.post, |s| want.contains(&s))
                .map_err(CreateError::Unsupported)?
            else {
                continue;
            };
            let base = eh_frame.len() as u64;
            eh_frame.extend_from_slice(&x.bytes);
            let relocs: Vec<Reloc> = x
                .relocs
                .into_iter()
                .map(|mut r| {
                    r.offset += base;
                    r
                })
                .collect();
            e.process_relocs(o, x.section, &relocs, At::EhFrame)?;
        }
        if next == e.included.len() {
            break;
        }
    }

    // Layout: code, stubs, read-only data, pointer slots | page | data.
    let mut layout: HashMap<SecKey, u64> = HashMap::new();
    let mut pos = 0u64;
    let sec = |k: &SecKey| &objs[k.0].post.sections[k.1];
    let mut place = |pos: &mut u64, want: &dyn Fn(&crate::objfile::Section) -> bool| {
        for k in &e.included {
            if want(sec(k)) {
                *pos = round_up(*pos, sec(k).align);
                layout.insert(*k, *pos);
                *pos += sec(k).size;
            }
        }
    };
    place(&mut pos, &|s| s.exec);
    let stubs_at = round_up(pos, 16);
    pos = stubs_at + (e.stubs.len() * arch::STUB_LEN) as u64;
    place(&mut pos, &|s| !s.exec && !s.write);
    // The unwind entries, then the zero terminator that ends them.
    let eh_at = round_up(pos, 8);
    let eh = (!eh_frame.is_empty()).then(|| EhFrame {
        offset: eh_at,
        size: eh_frame.len() as u64 + 4,
    });
    if let Some(eh) = &eh {
        pos = eh.offset + eh.size;
    }
    let slots_at = round_up(pos, 8);
    pos = slots_at + 8 * e.slots.len() as u64;
    let code_size = pos.max(1);
    let data_offset = round_up(code_size, PAGE);
    pos = data_offset;
    place(&mut pos, &|s| s.write && !s.exec);
    let data_size = pos - data_offset;

    let mut image = vec![0u8; (data_offset + data_size) as usize];
    image[..code_size as usize].fill(arch::CODE_FILL);
    for k in &e.included {
        let s = sec(k);
        let at = layout[k] as usize;
        if s.nobits {
            image[at..at + s.size as usize].fill(0);
        } else {
            image[at..at + s.data.len()].copy_from_slice(&s.data);
        }
    }
    if let Some(eh) = &eh {
        let at = eh.offset as usize;
        image[at..at + eh_frame.len()].copy_from_slice(&eh_frame);
        image[at + eh_frame.len()..at + eh.size as usize].fill(0);
    }
    let final_target = |t: &Tgt| -> RelocTarget {
        match t {
            Tgt::Sec(k, off) => RelocTarget::Image {
                offset: layout[k] + off,
            },
            Tgt::Stub(i) => RelocTarget::Image {
                offset: stubs_at + (*i * arch::STUB_LEN) as u64,
            },
            Tgt::Slot(i) => RelocTarget::Image {
                offset: slots_at + 8 * *i as u64,
            },
            Tgt::Final(f) => f.clone(),
        }
    };
    let mut relocations = Vec::new();
    for (i, &slot) in e.stubs.iter().enumerate() {
        let at = stubs_at as usize + i * arch::STUB_LEN;
        image[at..at + arch::STUB_LEN].copy_from_slice(&arch::stub_template());
        relocations.push(Relocation {
            offset: (at + arch::STUB_FIELD) as u64,
            kind: FieldKind::Pc32,
            target: final_target(&Tgt::Slot(slot)),
            addend: arch::PC_FIELD_ADDEND,
        });
    }
    for (i, t) in e.slots.iter().enumerate() {
        let at = slots_at + 8 * i as u64;
        image[at as usize..at as usize + 8].fill(0);
        relocations.push(Relocation {
            offset: at,
            kind: FieldKind::Abs64,
            target: final_target(t),
            addend: 0,
        });
    }
    for r in &e.relocs {
        let start = match r.at {
            At::Sec(k) => layout[&k],
            At::EhFrame => eh_at,
        };
        relocations.push(Relocation {
            offset: start + r.offset,
            kind: r.kind,
            target: final_target(&r.target),
            addend: r.addend,
        });
    }

    // The functions replaced, checked against the target's code.
    let mut functions = Vec::new();
    let mut replaced_names = Vec::new();
    for (o, pair) in objs.iter().enumerate() {
        for &s in &pair.diff.changed_text {
            let Some(fsym) = pair.post.function_of(s) else {
                continue;
            };
            let name = pair.post.symbols[fsym].name.clone();
            let Some(&pre_sec) = pair.diff.pre_of.get(&s) else {
                continue;
            };
            let Some(ts) = e
                .target_symbol(o, &name)
                .filter(|t| t.kind == SymKind::Func || t.kind == SymKind::Ifunc)
            else {
                if let Some(looked) = &target.exported_only {
                    // Inlined, or only not named: without symbols, no telling.
                    return Err(CreateError::Target(format!(
                        "the target {} is stripped and no symbols were found for the changed function `{name}` ({looked}); install its debug symbols (the -dbg/-dbgsym package) or build exactly what was installed",
                        target.name
                    )));
                }
                // No out-of-line copy in the target: callers are replaced instead.
                continue;
            };
            let pre = &pair.pre.sections[pre_sec];
            let mask = check_code(pre, target, ts, &name)?;
            let size = ts.size;
            let jump = !name.ends_with(".cold");
            if jump && (size as usize) < arch::JUMP_LEN {
                return Err(CreateError::TooShort {
                    function: name,
                    size,
                    need: arch::JUMP_LEN,
                });
            }
            functions.push(Function {
                name: name.clone(),
                file: pair.pre.source.clone(),
                vaddr: ts.value,
                size,
                expected: hex::encode(&pre.data),
                mask: hex::encode(&mask),
                replacement: layout[&(o, s)],
                jump,
            });
            replaced_names.push(name);
        }
    }
    if functions.is_empty() {
        return Err(CreateError::NothingToPatch(format!(
            "no changed function of {} exists out of line in the target (was everything inlined into a function that did not change?)",
            target.name
        )));
    }
    let mut symbols = Vec::new();
    for k in &e.included {
        let obj = &objs[k.0].post;
        for &si in &obj.sections[k.1].symbols {
            let s = &obj.symbols[si];
            if replaced_names.contains(&s.name) {
                continue;
            }
            symbols.push(NewSymbol {
                name: s.name.clone(),
                offset: layout[k] + s.value,
                size: s.size,
                kind: if s.is_func() { "function" } else { "data" }.into(),
            });
        }
    }
    let build_id = target.elf.build_id.clone().unwrap_or_default();
    Ok(Patch {
        meta: PatchMeta {
            id,
            cves: hotsplice_patch::cves_in(&description),
            description,
            level: 1,
            tool: concat!("hotsplice ", env!("CARGO_PKG_VERSION")).into(),
            target: Target {
                name: target.name.clone(),
                build_id: BuildId::from_bytes(&build_id),
                kind: if target.elf.fixed {
                    ObjectKind::Fixed
                } else {
                    ObjectKind::Relocatable
                },
            },
            code_size,
            data_offset,
            data_size,
            functions,
            relocations,
            symbols,
            eh_frame: eh,
        },
        image,
    })
}
