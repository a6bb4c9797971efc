//! Exact stacks: walking a stopped thread's frames with the unwind tables
//! (`.eh_frame`) of the objects it runs, through signal frames (the
//! restorer's CFI, which says where the kernel saved the interrupted
//! registers) and so from an alternate signal stack back onto the stack it
//! interrupted.
//!
//! Tables are parsed before any thread is stopped ([`Unwinder::for_process`])
//! and kept per object ([`TableCache`], by build-id), and the rule found for
//! each instruction address is kept too, so a walk in the stop window does
//! no parsing for addresses seen before (idle threads all wait at the same
//! few). A walk that cannot go on (code without unwind information, a value
//! it cannot read, a frame that does not move up the stack) says where it
//! stopped: the caller then falls back to a conservative scan for that
//! thread.

use gimli::{
    BaseAddresses, CfaRule, EhFrame, EndianSlice, Evaluation, EvaluationResult, Expression,
    LittleEndian, Location, Register, RegisterRule, UnwindContext, UnwindSection, Value,
};
use hotsplice_arch::current::dwarf;
use std::collections::HashMap;
use std::sync::Arc;

type Slice<'a> = EndianSlice<'a, LittleEndian>;

/// Frames a walk follows at most.
const MAX_FRAMES: usize = 512;
/// Operations one CFI expression may execute.
const MAX_EXPR_STEPS: u32 = 256;
/// Largest unwind section read from an object file.
const MAX_EH_FRAME: u64 = 64 << 20;

/// The unwind tables of one object (link-time addresses).
pub struct Tables {
    eh_frame: Vec<u8>,
    bases: BaseAddresses,
    /// `(start, end, offset of the FDE)`, sorted by start.
    fdes: Vec<(u64, u64, usize)>,
}

/// An object without usable unwind tables, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoTables(pub String);

impl Tables {
    /// The tables of an ELF image (a file, or the vDSO read from memory).
    pub fn parse<'d, D: object::ReadRef<'d>>(elf: D) -> Result<Tables, NoTables> {
        use object::{Object, ObjectSection};
        let file = object::File::parse(elf).map_err(|e| NoTables(format!("not ELF: {e}")))?;
        let section = file
            .section_by_name(".eh_frame")
            .ok_or_else(|| NoTables("no .eh_frame section".into()))?;
        if section.size() > MAX_EH_FRAME {
            return Err(NoTables(format!(
                ".eh_frame of {} bytes is larger than {MAX_EH_FRAME}",
                section.size()
            )));
        }
        let eh_frame = section
            .data()
            .map_err(|e| NoTables(format!(".eh_frame: {e}")))?
            .to_vec();
        let mut bases = BaseAddresses::default().set_eh_frame(section.address());
        if let Some(text) = file.section_by_name(".text") {
            bases = bases.set_text(text.address());
        }
        if let Some(got) = file.section_by_name(".got") {
            bases = bases.set_got(got.address());
        }
        let mut t = Tables {
            eh_frame,
            bases,
            fdes: Vec::new(),
        };
        t.index();
        Ok(t)
    }

    /// The tables of code hotsplice mapped: `.eh_frame` entries read from
    /// the process at `addr` (already relocated, so run-time addresses).
    pub fn from_eh_frame(eh_frame: Vec<u8>, addr: u64) -> Tables {
        let mut t = Tables {
            eh_frame,
            bases: BaseAddresses::default().set_eh_frame(addr),
            fdes: Vec::new(),
        };
        t.index();
        t
    }

    fn section(&self) -> EhFrame<Slice<'_>> {
        let mut s = EhFrame::new(&self.eh_frame, LittleEndian);
        s.set_address_size(8);
        s
    }

    /// Every FDE's address range, sorted. Malformed entries end the index
    /// (what was indexed before them stays usable).
    fn index(&mut self) {
        let section = self.section();
        let mut entries = section.entries(&self.bases);
        let mut fdes = Vec::new();
        while let Ok(Some(entry)) = entries.next() {
            if let gimli::CieOrFde::Fde(partial) = entry {
                let Ok(fde) = partial.parse(EhFrame::cie_from_offset) else {
                    continue;
                };
                let start = fde.initial_address();
                if let Some(end) = start.checked_add(fde.len()) {
                    if end > start {
                        fdes.push((start, end, fde.offset()));
                    }
                }
            }
        }
        fdes.sort_unstable();
        self.fdes = fdes;
    }

    /// The rule for link-time address `vaddr`.
    fn row(&self, vaddr: u64, ctx: &mut UnwindContext<usize>) -> Option<Row> {
        let i = self.fdes.partition_point(|f| f.0 <= vaddr).checked_sub(1)?;
        let (start, end, offset) = self.fdes[i];
        if vaddr < start || vaddr >= end {
            return None;
        }
        let section = self.section();
        let fde = section
            .fde_from_offset(
                &self.bases,
                gimli::EhFrameOffset(offset),
                EhFrame::cie_from_offset,
            )
            .ok()?;
        let row = fde
            .unwind_info_for_address(&section, &self.bases, ctx, vaddr)
            .ok()?;
        let cfa = match row.cfa() {
            CfaRule::RegisterAndOffset { register, offset } => Cfa::Reg(register.0, *offset),
            CfaRule::Expression(e) => Cfa::Expr(e.offset, e.length),
        };
        let mut rules = Vec::new();
        for (reg, rule) in row.registers() {
            if (reg.0 as usize) >= dwarf::REGS {
                continue;
            }
            let r = match rule {
                RegisterRule::Undefined => Rule::Undefined,
                RegisterRule::SameValue => Rule::Same,
                RegisterRule::Offset(n) => Rule::Offset(*n),
                RegisterRule::ValOffset(n) => Rule::ValOffset(*n),
                RegisterRule::Register(r) => Rule::Reg(r.0),
                RegisterRule::Expression(e) => Rule::Expr(e.offset, e.length),
                RegisterRule::ValExpression(e) => Rule::ValExpr(e.offset, e.length),
                RegisterRule::Constant(c) => Rule::Constant(*c),
                RegisterRule::Architectural => Rule::Unsupported,
            };
            rules.push((reg.0, r));
        }
        Some(Row {
            cfa,
            rules,
            signal: fde.cie().is_signal_trampoline(),
        })
    }

    fn expression(&self, offset: usize, len: usize) -> Option<Expression<Slice<'_>>> {
        let bytes = self.eh_frame.get(offset..offset.checked_add(len)?)?;
        Some(Expression(EndianSlice::new(bytes, LittleEndian)))
    }
}

/// How to find the canonical frame address.
#[derive(Clone, Copy, Debug)]
enum Cfa {
    Reg(u16, i64),
    /// A DWARF expression at (offset, length) in `.eh_frame`.
    Expr(usize, usize),
}

/// How to find a register's value in the caller.
#[derive(Clone, Copy, Debug)]
enum Rule {
    Undefined,
    Same,
    Offset(i64),
    ValOffset(i64),
    Reg(u16),
    Expr(usize, usize),
    ValExpr(usize, usize),
    Constant(u64),
    Unsupported,
}

/// The unwind rule at one instruction address.
#[derive(Clone, Debug)]
struct Row {
    cfa: Cfa,
    rules: Vec<(u16, Rule)>,
    /// The frame is a signal trampoline's: the kernel saved the
    /// interrupted registers, and the address it returns to is exact.
    signal: bool,
}

/// Tables per object, kept between processes and runs: key is the
/// build-id (or path and inode for an object without one).
#[derive(Default)]
pub struct TableCache {
    tables: HashMap<String, Result<Arc<Tables>, NoTables>>,
}

impl TableCache {
    fn get(
        &mut self,
        key: &str,
        load: impl FnOnce() -> Result<Tables, NoTables>,
    ) -> Result<Arc<Tables>, NoTables> {
        self.tables
            .entry(key.to_string())
            .or_insert_with(|| load().map(Arc::new))
            .clone()
    }
}

/// Where one object's code lies in the process, with its tables.
struct Placed {
    start: u64,
    end: u64,
    bias: u64,
    name: String,
    tables: Result<Arc<Tables>, NoTables>,
}

/// Reads 8-byte words of the target's memory during a walk.
pub trait Memory {
    fn word(&self, addr: u64) -> Option<u64>;
}

/// Where a walk ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// At the outermost frame (the return address is undefined there, as
    /// `_start` and a new thread's first frame say): the walk is exact.
    Outermost,
    /// The address is in no mapped object (JIT code, a corrupt stack).
    NoObject(u64),
    /// The object has no unwind tables, or none for this address (an
    /// assembly function without CFI).
    NoInfo {
        pc: u64,
        object: String,
        why: String,
    },
    /// A rule the walker does not follow, or one that reads memory it
    /// cannot read.
    BadRule { pc: u64, what: &'static str },
    /// The next frame is not further up the stack.
    NoProgress { pc: u64 },
    /// More than `MAX_FRAMES` frames.
    TooDeep,
}

impl Stop {
    pub fn exact(&self) -> bool {
        *self == Stop::Outermost
    }
}

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stop::Outermost => write!(f, "walked to the outermost frame"),
            Stop::NoObject(pc) => write!(f, "{pc:#x} is in no mapped object"),
            Stop::NoInfo { pc, object, why } => {
                write!(f, "no unwind information for {pc:#x} in {object} ({why})")
            }
            Stop::BadRule { pc, what } => write!(f, "at {pc:#x}: {what}"),
            Stop::NoProgress { pc } => {
                write!(f, "at {pc:#x}: the frame does not move up the stack")
            }
            Stop::TooDeep => write!(f, "more than {MAX_FRAMES} frames"),
        }
    }
}

/// The unwinder for one process: its objects and their tables.
pub struct Unwinder {
    placed: Vec<Placed>,
    /// pc → index into `found`, or None when no rule covers it.
    rows: HashMap<u64, Option<usize>>,
    /// (object, rule) for each pc looked up.
    found: Vec<(usize, Row)>,
    ctx: Box<UnwindContext<usize>>,
}

/// An object's code range in a process and where to read its ELF image.
pub struct ObjectCode<'a> {
    pub start: u64,
    pub end: u64,
    pub bias: u64,
    pub name: &'a str,
    /// Cache key: the build-id, or something else naming this exact file.
    pub key: String,
}

impl Unwinder {
    /// An unwinder over `objects`; `load` reads an object's tables when the
    /// cache does not hold them yet.
    pub fn new<'a>(
        objects: impl IntoIterator<Item = ObjectCode<'a>>,
        cache: &mut TableCache,
        mut load: impl FnMut(&ObjectCode<'a>) -> Result<Tables, NoTables>,
    ) -> Unwinder {
        let mut placed: Vec<Placed> = objects
            .into_iter()
            .map(|o| Placed {
                start: o.start,
                end: o.end,
                bias: o.bias,
                name: o.name.to_string(),
                tables: cache.get(&o.key, || load(&o)),
            })
            .collect();
        placed.sort_by_key(|p| p.start);
        Unwinder {
            placed,
            rows: HashMap::new(),
            found: Vec::new(),
            ctx: Box::new(UnwindContext::new()),
        }
    }

    fn object(&self, pc: u64) -> Option<usize> {
        let i = self
            .placed
            .partition_point(|p| p.start <= pc)
            .checked_sub(1)?;
        (pc < self.placed[i].end).then_some(i)
    }

    /// The rule at `pc` (cached: an index into `found`), or why there is
    /// none.
    fn row(&mut self, pc: u64) -> Result<usize, Stop> {
        let cached = match self.rows.get(&pc) {
            Some(r) => *r,
            None => {
                let found = self.object(pc).and_then(|i| {
                    let p = &self.placed[i];
                    let t = p.tables.as_ref().ok()?;
                    t.row(pc.wrapping_sub(p.bias), &mut self.ctx)
                        .map(|r| (i, r))
                });
                let idx = found.map(|f| {
                    self.found.push(f);
                    self.found.len() - 1
                });
                self.rows.insert(pc, idx);
                idx
            }
        };
        match cached {
            Some(i) => Ok(i),
            None => Err(self.no_info(pc)),
        }
    }

    fn no_info(&self, pc: u64) -> Stop {
        match self.object(pc) {
            None => Stop::NoObject(pc),
            Some(i) => {
                let p = &self.placed[i];
                Stop::NoInfo {
                    pc,
                    object: p.name.clone(),
                    why: match &p.tables {
                        Err(NoTables(why)) => why.clone(),
                        Ok(_) => "no FDE covers it".into(),
                    },
                }
            }
        }
    }

    /// Walk from the registers of a stopped thread: `out` receives its
    /// instruction pointer, then each return address, innermost first, each
    /// with whether it is exact (the instruction pointer, and where a signal
    /// interrupted) — a return address is the instruction after a call, so
    /// the code a frame is in is at `pc - 1` then.
    pub fn walk(
        &mut self,
        regs: &[Option<u64>; dwarf::REGS],
        mem: &impl Memory,
        out: &mut Vec<(u64, bool)>,
    ) -> Stop {
        let mut regs = *regs;
        let Some(ip) = regs[dwarf::RA as usize] else {
            return Stop::BadRule {
                pc: 0,
                what: "no instruction pointer",
            };
        };
        out.push((ip, true));
        // The first frame's pc is exact; a return address is the
        // instruction after a call, so the call is looked up at pc - 1 —
        // except after a signal frame, which resumes exactly there.
        let mut exact_pc = true;
        for _ in 0..MAX_FRAMES {
            let pc = regs[dwarf::RA as usize].unwrap_or(0);
            let lookup = if exact_pc { pc } else { pc.wrapping_sub(1) };
            let idx = match self.row(lookup) {
                Ok(i) => i,
                Err(stop) => return stop,
            };
            let (obj, row) = &self.found[idx];
            let Ok(tables) = self.placed[*obj].tables.as_ref() else {
                return Stop::BadRule {
                    pc,
                    what: "tables vanished",
                };
            };
            let bad = |what| Stop::BadRule { pc, what };
            let cfa = match row.cfa {
                Cfa::Reg(r, off) => match regs.get(r as usize).copied().flatten() {
                    Some(v) => v.wrapping_add(off as u64),
                    None => return bad("the CFA register is unknown"),
                },
                Cfa::Expr(o, l) => match eval(tables, o, l, &regs, mem, None) {
                    Some(Place::Address(a)) => a,
                    Some(Place::Value(v)) => v,
                    None => return bad("the CFA expression cannot be evaluated"),
                },
            };
            let mut next = [None; dwarf::REGS];
            for (r, slot) in next.iter_mut().enumerate() {
                let r = r as u16;
                let rule = row
                    .rules
                    .iter()
                    .find(|(n, _)| *n == r)
                    .map(|(_, rule)| *rule);
                *slot = match rule {
                    None if r == dwarf::SP => Some(cfa),
                    None if dwarf::callee_saved(r) => regs[r as usize],
                    None | Some(Rule::Undefined) => None,
                    Some(Rule::Same) => regs[r as usize],
                    Some(Rule::Offset(n)) => match mem.word(cfa.wrapping_add(n as u64)) {
                        Some(v) => Some(v),
                        None => return bad("a saved register cannot be read"),
                    },
                    Some(Rule::ValOffset(n)) => Some(cfa.wrapping_add(n as u64)),
                    Some(Rule::Reg(from)) => regs.get(from as usize).copied().flatten(),
                    Some(Rule::Constant(c)) => Some(c),
                    Some(Rule::Expr(o, l)) => match eval(tables, o, l, &regs, mem, Some(cfa)) {
                        Some(Place::Address(a)) => match mem.word(a) {
                            Some(v) => Some(v),
                            None => return bad("a saved register cannot be read"),
                        },
                        Some(Place::Value(v)) => Some(v),
                        None => return bad("a register expression cannot be evaluated"),
                    },
                    Some(Rule::ValExpr(o, l)) => match eval(tables, o, l, &regs, mem, Some(cfa)) {
                        Some(Place::Value(v)) | Some(Place::Address(v)) => Some(v),
                        None => return bad("a register expression cannot be evaluated"),
                    },
                    Some(Rule::Unsupported) => return bad("an unsupported register rule"),
                };
            }
            let ra = match next[dwarf::RA as usize] {
                None | Some(0) => return Stop::Outermost,
                Some(ra) => ra,
            };
            let sp = regs[dwarf::SP as usize].unwrap_or(0);
            // Up the stack, except out of a signal frame, which may switch
            // stacks (an alternate signal stack below or above the other).
            if !row.signal && cfa <= sp {
                return Stop::NoProgress { pc };
            }
            out.push((ra, row.signal));
            exact_pc = row.signal;
            regs = next;
        }
        Stop::TooDeep
    }
}

enum Place {
    Address(u64),
    Value(u64),
}

/// Evaluate a CFI expression (`cfa` pushed first for register rules).
fn eval(
    tables: &Tables,
    offset: usize,
    len: usize,
    regs: &[Option<u64>; dwarf::REGS],
    mem: &impl Memory,
    cfa: Option<u64>,
) -> Option<Place> {
    let expr = tables.expression(offset, len)?;
    let encoding = gimli::Encoding {
        format: gimli::Format::Dwarf32,
        version: 4,
        address_size: 8,
    };
    let mut ev: Evaluation<Slice<'_>> = expr.evaluation(encoding);
    // The tables come from the target's files: an expression that loops
    // (a backward DW_OP_skip) must not hold the stop window.
    ev.set_max_iterations(MAX_EXPR_STEPS);
    if let Some(c) = cfa {
        ev.set_initial_value(c);
    }
    let mut r = ev.evaluate().ok()?;
    for _ in 0..64 {
        r = match r {
            EvaluationResult::Complete => break,
            EvaluationResult::RequiresRegister { register, .. } => {
                let Register(n) = register;
                let v = regs.get(n as usize).copied().flatten()?;
                ev.resume_with_register(Value::Generic(v)).ok()?
            }
            EvaluationResult::RequiresMemory { address, size, .. } => {
                let w = mem.word(address)?;
                let v = match size {
                    8 => w,
                    4 => w & 0xffff_ffff,
                    2 => w & 0xffff,
                    1 => w & 0xff,
                    _ => return None,
                };
                ev.resume_with_memory(Value::Generic(v)).ok()?
            }
            _ => return None,
        };
    }
    if !matches!(r, EvaluationResult::Complete) {
        return None;
    }
    let pieces = ev.result();
    match pieces.first()?.location {
        Location::Address { address } => Some(Place::Address(address)),
        Location::Value { value } => Some(Place::Value(value.to_u64(!0).ok()?)),
        _ => None,
    }
}

/// The unwinder for process `pid`: every object it maps (tables read from
/// the mapped file through `/proc/PID/map_files`, so deleted files and other
/// mount namespaces work) and its vDSO (read from memory).
pub fn for_process(
    pid: hotsplice_process::Pid,
    maps: &[hotsplice_process::Mapping],
    objects: &[crate::LoadedObject],
    cache: &mut TableCache,
) -> Unwinder {
    let mut code: Vec<ObjectCode<'_>> = objects
        .iter()
        .map(|o| ObjectCode {
            start: o.start,
            end: o.end,
            bias: o.bias,
            name: &o.path,
            key: if o.build_id.is_empty() {
                format!("{}:{}:{}", o.inode.0, o.inode.1, o.path)
            } else {
                o.build_id.to_string()
            },
        })
        .collect();
    let mut vdso_image = None;
    if let Some(m) = maps.iter().find(|m| m.path.as_deref() == Some("[vdso]")) {
        if let Ok(bytes) = hotsplice_process::read_memory(pid, m.start, (m.end - m.start) as usize)
        {
            let bias = vdso_bias(&bytes).map(|v| m.start.wrapping_sub(v));
            if let Some(bias) = bias {
                code.push(ObjectCode {
                    start: m.start,
                    end: m.end,
                    bias,
                    name: "[vdso]",
                    // The vDSO is the kernel's: one per kernel build, but
                    // keyed by its bytes to be sure.
                    key: format!("vdso:{:x}", fingerprint(&bytes)),
                });
                vdso_image = Some(bytes);
            }
        }
    }
    // The code of applied patches, with the unwind information they carry
    // (read from the process: untrusted, bounded, parsed leniently).
    let patches: Vec<(String, u64, u64, u64, Vec<u8>)> = crate::state::applied_in(pid, maps)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|h| {
            let u = h.unwind?;
            let len = usize::try_from(u.eh_frame_len.min(hotsplice_patch::MAX_EH_FRAME)).ok()?;
            let bytes = hotsplice_process::read_memory(pid, u.eh_frame, len).ok()?;
            Some((
                format!("patch {}", h.patch_id),
                h.code_start,
                h.code_end(),
                u.eh_frame,
                bytes,
            ))
        })
        .collect();
    for (name, start, end, at, bytes) in &patches {
        code.push(ObjectCode {
            start: *start,
            end: *end,
            bias: 0,
            name,
            // Relocated for this process: keyed by place and bytes.
            key: format!("patch:{at:x}:{:x}:{:x}", bytes.len(), fingerprint(bytes)),
        });
    }
    let map_file = |o: &ObjectCode<'_>| {
        objects.iter().find(|l| l.start == o.start).map(|l| {
            format!(
                "/proc/{pid}/map_files/{:x}-{:x}",
                l.first_map.0, l.first_map.1
            )
        })
    };
    Unwinder::new(code, cache, |o| {
        if let Some((_, _, _, at, bytes)) = patches.iter().find(|p| p.1 == o.start) {
            return Ok(Tables::from_eh_frame(bytes.clone(), *at));
        }
        if o.name == "[vdso]" {
            return match &vdso_image {
                Some(b) => Tables::parse(b.as_slice()),
                None => Err(NoTables("the vDSO cannot be read".into())),
            };
        }
        let path = map_file(o).ok_or_else(|| NoTables("not a mapped file".into()))?;
        let file = std::fs::File::open(&path).map_err(|e| NoTables(format!("{path}: {e}")))?;
        let cache = object::read::ReadCache::new(file);
        Tables::parse(&cache)
    })
}

/// The link-time address the vDSO image's first segment starts at.
fn vdso_bias(image: &[u8]) -> Option<u64> {
    use object::{Object, ObjectSegment};
    let f = object::File::parse(image).ok()?;
    let first = f.segments().next()?;
    Some(first.address() & !0xfff)
}

fn fingerprint(bytes: &[u8]) -> u64 {
    // FNV-1a: a cache key, not a security check.
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Memory of a process read a word at a time (outside the stop window).
pub struct ProcessMemory(pub hotsplice_process::Pid);

impl ProcessMemory {
    pub fn word_at(&self, addr: u64) -> Option<u64> {
        let b = hotsplice_process::read_memory(self.0, addr, 8).ok()?;
        Some(u64::from_le_bytes(b.get(..8)?.try_into().ok()?))
    }
}

impl Memory for ProcessMemory {
    fn word(&self, addr: u64) -> Option<u64> {
        self.word_at(addr)
    }
}

/// Stacks already read (each `(start address, bytes)`), with a fallback
/// for words outside them.
pub struct StackMemory<'a, F: Fn(u64) -> Option<u64>> {
    /// Sorted by start.
    pub spans: Vec<(u64, &'a [u8])>,
    pub fallback: F,
}

impl<'a, F: Fn(u64) -> Option<u64>> StackMemory<'a, F> {
    /// The stacks `read_memory_into` read into `buf` (`read[i]` is where
    /// `spans[i]` landed, if it was readable), with `fallback` for the rest.
    pub fn of(
        spans: &[(u64, usize)],
        read: &[Option<(usize, usize)>],
        buf: &'a [u8],
        fallback: F,
    ) -> Self {
        let mut spans: Vec<(u64, &'a [u8])> = spans
            .iter()
            .zip(read)
            .filter_map(|(s, r)| r.map(|(o, l)| (s.0, &buf[o..o + l])))
            .collect();
        spans.sort_unstable_by_key(|s| s.0);
        StackMemory { spans, fallback }
    }
}

impl<F: Fn(u64) -> Option<u64>> Memory for StackMemory<'_, F> {
    fn word(&self, addr: u64) -> Option<u64> {
        let i = self.spans.partition_point(|s| s.0 <= addr);
        if let Some(&(start, bytes)) = i.checked_sub(1).map(|i| &self.spans[i]) {
            let off = (addr - start) as usize;
            if let Some(w) = bytes.get(off..off.checked_add(8)?) {
                return Some(u64::from_le_bytes(w.try_into().ok()?));
            }
        }
        (self.fallback)(addr)
    }
}

/// Tables shared by every walk of this process's hotsplice (the daemon and
/// upgrades meet the same libraries again and again).
pub fn shared_cache() -> &'static std::sync::Mutex<TableCache> {
    static CACHE: std::sync::OnceLock<std::sync::Mutex<TableCache>> = std::sync::OnceLock::new();
    CACHE.get_or_init(Default::default)
}
