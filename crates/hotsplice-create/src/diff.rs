//! Section-by-section comparison of the same object built before and after
//! the fix.

use crate::objfile::{normalized, ObjFile, Ref};
use hotsplice_arch::current::ElfReloc;
use std::collections::{HashMap, HashSet};

/// What changed between two builds of one object.
#[derive(Debug, Default)]
pub struct ObjDiff {
    /// Post-build text sections whose code differs from the pre build.
    pub changed_text: Vec<usize>,
    /// Post-build sections with no pre-build counterpart.
    pub new_sections: HashSet<usize>,
    /// Named data whose initial value, size or layout differs:
    /// `(post section, symbol name)`.
    pub changed_data: Vec<(usize, String)>,
    /// Post section index -> pre section index.
    pub pre_of: HashMap<usize, usize>,
}

impl ObjDiff {
    pub fn is_empty(&self) -> bool {
        self.changed_text.is_empty() && self.changed_data.is_empty()
    }
}

impl ObjDiff {
    /// The same result for `other`, an object built from the same source
    /// with other code-generation flags, matching sections by name.
    pub fn remap(&self, post: &ObjFile, other: &ObjFile) -> Option<ObjDiff> {
        let map = |i: usize| -> Option<usize> {
            let name = &post.sections[i].name;
            let hits: Vec<usize> = other
                .sections
                .iter()
                .enumerate()
                .filter(|(_, s)| &s.name == name)
                .map(|(j, _)| j)
                .collect();
            (hits.len() == 1).then(|| hits[0])
        };
        // Every allocated section must line up one to one.
        let alloc = |o: &ObjFile| {
            o.sections
                .iter()
                .filter(|s| s.alloc && s.size > 0 && !s.name.starts_with(".note"))
                .count()
        };
        if alloc(post) != alloc(other) {
            return None;
        }
        let mut out = ObjDiff::default();
        for &i in &self.changed_text {
            out.changed_text.push(map(i)?);
        }
        for &i in &self.new_sections {
            out.new_sections.insert(map(i)?);
        }
        for (i, name) in &self.changed_data {
            out.changed_data.push((map(*i)?, name.clone()));
        }
        for (&i, &p) in &self.pre_of {
            out.pre_of.insert(map(i)?, p);
        }
        Some(out)
    }
}

fn paired(pre: &ObjFile, post: &ObjFile) -> HashMap<usize, usize> {
    let mut by_name: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, s) in pre.sections.iter().enumerate() {
        if s.alloc {
            by_name.entry(s.name.as_str()).or_default().push(i);
        }
    }
    for v in by_name.values_mut() {
        v.reverse();
    }
    let mut out = HashMap::new();
    for (i, s) in post.sections.iter().enumerate() {
        if !s.alloc {
            continue;
        }
        if let Some(p) = by_name.get_mut(s.name.as_str()).and_then(|v| v.pop()) {
            out.insert(i, p);
        }
    }
    out
}

/// Compare two builds of one object.
pub fn diff(pre: &ObjFile, post: &ObjFile) -> ObjDiff {
    let pre_of = paired(pre, post);
    let mut d = ObjDiff::default();
    let mut anon_cache: HashMap<String, bool> = HashMap::new();
    for (i, s) in post.sections.iter().enumerate() {
        if !s.alloc {
            continue;
        }
        let Some(&p) = pre_of.get(&i) else {
            d.new_sections.insert(i);
            continue;
        };
        let same = s.size == pre.sections[p].size && normalized(pre, p) == normalized(post, i);
        if s.exec {
            let deps_same = same && anonymous_deps_same(pre, post, i, &mut anon_cache);
            if !deps_same {
                d.changed_text.push(i);
            }
        } else if !same && !s.merge && !s.symbols.is_empty() {
            for sym in changed_data_symbols(pre, p, post, i) {
                d.changed_data.push((i, post.symbols[sym].name.clone()));
            }
        }
    }
    d.pre_of = pre_of;
    d
}

/// The symbols of a changed data section (`i` after, `p` before) that
/// account for the change: those whose own bytes or references differ,
/// when every symbol kept its place and size (several variables share a
/// section when an attribute names it, e.g. `__read_mostly`); else, or if
/// no symbol's own range differs, every symbol of the section. Only what
/// messages name depends on it.
fn changed_data_symbols(pre: &ObjFile, p: usize, post: &ObjFile, i: usize) -> Vec<usize> {
    let all = post.sections[i].symbols.clone();
    if all.len() < 2 {
        return all;
    }
    let (pb, pr) = normalized(pre, p);
    let (qb, qr) = normalized(post, i);
    let range = |b: &[u8], r: &[(u64, ElfReloc, Ref)], at: u64, n: u64| {
        let end = at.saturating_add(n);
        let bytes = b.get(at as usize..end as usize).map(<[u8]>::to_vec);
        let refs: Vec<_> = r
            .iter()
            .filter(|(o, _, _)| (at..end).contains(o))
            .map(|(o, k, x)| (o - at, *k, x.clone()))
            .collect();
        (bytes, refs)
    };
    let mut changed = Vec::new();
    for &sym in &all {
        let s = &post.symbols[sym];
        let before = pre.sections[p]
            .symbols
            .iter()
            .map(|&j| &pre.symbols[j])
            .find(|b| b.name == s.name);
        let Some(b) = before.filter(|b| b.value == s.value && b.size == s.size && s.size > 0)
        else {
            return all;
        };
        if range(&pb, &pr, b.value, b.size) != range(&qb, &qr, s.value, s.size) {
            changed.push(sym);
        }
    }
    if changed.is_empty() {
        all
    } else {
        changed
    }
}

/// Sections without symbols that a function refers to (jump tables and
/// similar) belong to it: if one changed, the function changed.
pub(crate) fn anonymous_deps_same(
    pre: &ObjFile,
    post: &ObjFile,
    sec: usize,
    cache: &mut HashMap<String, bool>,
) -> bool {
    let (_, refs) = normalized(post, sec);
    for (_, _, r) in refs {
        let Ref::Anonymous { section, .. } = r else {
            continue;
        };
        let same = *cache.entry(section.clone()).or_insert_with(|| {
            match (pre.section_named(&section), post.section_named(&section)) {
                (Some(a), Some(b)) => normalized(pre, a) == normalized(post, b),
                _ => false,
            }
        });
        if !same {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two tables of function pointers in one named section (as kernel
    /// `__read_mostly` data), compiled with `cc`; `fixed` points one entry
    /// of the second table at another function.
    fn object(dir: &std::path::Path, fixed: bool) -> ObjFile {
        let second = if fixed { "check_v2" } else { "check" };
        crate::objfile::compiled(
            dir,
            if fixed { "post" } else { "pre" },
            &format!(
                "int check(int x) {{ return x; }}\nint check_v2(int x) {{ return check(x) + 1; }}\n\
                 #define SHARED __attribute__((section(\".data.shared\")))\n\
                 int (*match_reg[2])(int) SHARED = {{ check, check }};\n\
                 int (*target_reg[2])(int) SHARED = {{ check, {second} }};\n"
            ),
        )
    }

    #[test]
    fn a_shared_data_section_names_the_variable_that_changed() {
        let dir = std::env::temp_dir().join(format!("hs-diff-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (pre, post) = (object(&dir, false), object(&dir, true));
        let d = diff(&pre, &post);
        let names: Vec<&str> = d.changed_data.iter().map(|(_, n)| n.as_str()).collect();
        assert_eq!(names, ["target_reg"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
