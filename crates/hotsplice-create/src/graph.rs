//! What the build made of what: compiled objects, links, archives and
//! objcopy'd copies, so a changed object is traced to every executable or
//! library it ends up in — through `ar` (thin or not), `ld -r`/`gcc -r` and
//! `objcopy`, whatever the files are called.

use crate::wrapper::Record;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Component, Path, PathBuf};

pub struct Graph {
    /// Object (relative to the tree) -> its source (relative).
    pub compiled: BTreeMap<PathBuf, PathBuf>,
    /// The compile record of each object, to compile it again.
    pub records: HashMap<PathBuf, Record>,
    /// What each output was made of: link inputs, archive members, the
    /// input of an objcopy.
    parts: HashMap<PathBuf, Vec<PathBuf>>,
    /// Linked executables and shared libraries (not relocatable links).
    pub finals: Vec<PathBuf>,
}

/// `p` with `.` and `..` taken out, without asking the file system.
fn lexical(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// ELF file type (`e_type`) of `path`: 1 relocatable, 2 executable, 3 shared.
fn elf_type(path: &Path) -> Option<u16> {
    let mut head = [0u8; 18];
    let mut f = std::fs::File::open(path).ok()?;
    std::io::Read::read_exact(&mut f, &mut head).ok()?;
    (head[..4] == *b"\x7fELF").then(|| u16::from_le_bytes([head[16], head[17]]))
}

impl Graph {
    pub fn new(root: &Path, log: &[Record]) -> Graph {
        let root = root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
        let rel = |p: &Path| {
            let p = lexical(p);
            p.strip_prefix(&root).map(Path::to_path_buf).unwrap_or(p)
        };
        let mut g = Graph {
            compiled: BTreeMap::new(),
            records: HashMap::new(),
            parts: HashMap::new(),
            finals: Vec::new(),
        };
        let mut links = Vec::new();
        for r in log {
            match r {
                Record::Compile { source, object, .. } => {
                    g.compiled.insert(rel(object), rel(source));
                    g.records.insert(rel(object), r.clone());
                }
                Record::Link { output, inputs } => {
                    let out = rel(output);
                    g.parts
                        .insert(out.clone(), inputs.iter().map(|i| rel(i)).collect());
                    links.push(out);
                }
                Record::Archive { output, members } => {
                    let list = g.parts.entry(rel(output)).or_default();
                    for m in members {
                        let m = rel(m);
                        if !list.contains(&m) {
                            list.push(m);
                        }
                    }
                }
                Record::Copy { input, output } => {
                    g.parts.insert(rel(output), vec![rel(input)]);
                }
            }
        }
        let mut seen = BTreeSet::new();
        for out in links {
            if seen.insert(out.clone()) && matches!(elf_type(&root.join(&out)), Some(2 | 3)) {
                g.finals.push(out);
            }
        }
        g
    }

    /// The compiled objects whose code is in `output`: followed through
    /// archives, relocatable links and copies, not into shared libraries it
    /// was linked against.
    pub fn objects_in(&self, output: &Path) -> Vec<PathBuf> {
        let mut found = BTreeSet::new();
        let mut seen = BTreeSet::new();
        let mut stack = vec![output.to_path_buf()];
        while let Some(node) = stack.pop() {
            if !seen.insert(node.clone()) {
                continue;
            }
            if self.compiled.contains_key(&node) {
                found.insert(node.clone());
            }
            if node != output && self.finals.contains(&node) {
                continue;
            }
            if let Some(parts) = self.parts.get(&node) {
                stack.extend(parts.iter().cloned());
            }
        }
        found.into_iter().collect()
    }

    /// This graph for a copy of the built tree at `from` placed at `to`.
    pub fn rebased(&self, from: &Path, to: &Path) -> Graph {
        Graph {
            compiled: self.compiled.clone(),
            records: self
                .records
                .iter()
                .map(|(k, r)| (k.clone(), r.rebased(from, to)))
                .collect(),
            parts: self.parts.clone(),
            finals: self.finals.clone(),
        }
    }

    /// Whether the build compiled `source` (relative to the tree).
    pub fn is_source(&self, source: &Path) -> bool {
        let s = lexical(source);
        self.compiled.values().any(|c| *c == s)
    }

    /// The objects compiled from any of `sources` (relative to the tree).
    pub fn objects_of_sources(&self, sources: &[PathBuf]) -> Vec<PathBuf> {
        self.compiled
            .iter()
            .filter(|(_, s)| sources.iter().any(|t| lexical(t) == **s))
            .map(|(o, _)| o.clone())
            .collect()
    }

    /// The executables and libraries that contain any of `objects`.
    /// The compiled sources that `#include` one of the changed C files
    /// `changed` (paths relative to `root`), directly or through other
    /// compiled sources — glibc compiles `posix/glob.c` as
    /// `sysdeps/unix/sysv/linux/glob.c`, which includes it, and
    /// `stdlib/strtod_l.c` into every `strto*_l` and `wcsto*_l` object. An
    /// include names the file by a path relative to the includer or by its
    /// tail (`<stdlib/strtod_l.c>` through `-I`); either counts, so this may
    /// name a source that does not include it after all, which costs one
    /// compile and changes nothing. Only `.c` files: a changed header is
    /// included through too many paths to follow by name.
    pub fn sources_including(&self, root: &Path, changed: &[PathBuf]) -> Vec<PathBuf> {
        let mut affected: Vec<PathBuf> = changed
            .iter()
            .map(|c| lexical(c))
            .filter(|c| c.extension().is_some_and(|e| e == "c"))
            .collect();
        let sources: BTreeSet<&PathBuf> = self.compiled.values().collect();
        let includes: Vec<(&PathBuf, Vec<String>)> = sources
            .iter()
            .filter_map(|src| {
                let text = std::fs::read(root.join(src)).ok()?;
                let found = c_includes(&String::from_utf8_lossy(&text));
                (!found.is_empty()).then_some((*src, found))
            })
            .collect();
        let mut found = BTreeSet::new();
        loop {
            let before = found.len();
            for (src, names) in &includes {
                if found.contains(*src) || affected.contains(src) {
                    continue;
                }
                let dir = src.parent().unwrap_or(Path::new(""));
                let hit = names.iter().any(|n| {
                    let direct = lexical(&dir.join(n));
                    let tail: PathBuf = Path::new(n)
                        .components()
                        .filter(|c| matches!(c, Component::Normal(_)))
                        .collect();
                    affected.iter().any(|a| {
                        *a == direct || (!tail.as_os_str().is_empty() && a.ends_with(&tail))
                    })
                });
                if hit {
                    found.insert((*src).clone());
                }
            }
            if found.len() == before {
                break;
            }
            affected.extend(found.iter().cloned());
            affected.sort();
            affected.dedup();
        }
        found.into_iter().collect()
    }

    pub fn outputs_with(&self, objects: &[PathBuf]) -> Vec<PathBuf> {
        self.finals
            .iter()
            .filter(|f| self.objects_in(f).iter().any(|o| objects.contains(o)))
            .cloned()
            .collect()
    }
}

/// The `.c` files a C source `#include`s, as written (`<...>` or `"..."`).
pub(crate) fn c_includes(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            let rest = l.trim_start().strip_prefix('#')?.trim_start();
            let rest = rest.strip_prefix("include")?.trim_start();
            let close = match rest.chars().next()? {
                '<' => '>',
                '"' => '"',
                _ => return None,
            };
            let name = rest[1..].split(close).next()?;
            name.ends_with(".c").then(|| name.to_string())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_are_followed_through_archives_copies_and_relocatable_links() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().canonicalize().unwrap();
        // Two linked outputs: a shared library (e_type 3) and a program.
        let mut elf = vec![0u8; 64];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[16] = 3;
        std::fs::write(root.join("lib.so"), &elf).unwrap();
        elf[16] = 2;
        std::fs::write(root.join("prog"), &elf).unwrap();
        let p = |s: &str| root.join(s);
        let compile = |src: &str, obj: &str| Record::Compile {
            source: p(src),
            object: p(obj),
            cwd: root.clone(),
            compiler: "/usr/bin/cc".into(),
            argv: vec![],
        };
        let log = vec![
            compile("a.c", "a.os"),
            compile("b.c", "sub/../b.o"),
            compile("m.c", "m.o"),
            Record::Link {
                output: p("ab.o"),
                inputs: vec![p("a.os"), p("b.o")],
            },
            Record::Copy {
                input: p("ab.o"),
                output: p("ab-copy.o"),
            },
            Record::Archive {
                output: p("libab.a"),
                members: vec![p("ab-copy.o")],
            },
            Record::Link {
                output: p("lib.so"),
                inputs: vec![p("libab.a")],
            },
            Record::Link {
                output: p("prog"),
                inputs: vec![p("m.o"), p("lib.so")],
            },
        ];
        let g = Graph::new(&root, &log);
        assert_eq!(
            g.finals,
            vec![PathBuf::from("lib.so"), PathBuf::from("prog")]
        );
        let lib = g.objects_in(Path::new("lib.so"));
        assert_eq!(lib, vec![PathBuf::from("a.os"), PathBuf::from("b.o")]);
        // The program is linked against the library, not made of it.
        assert_eq!(g.objects_in(Path::new("prog")), vec![PathBuf::from("m.o")]);
        let touched = g.objects_of_sources(&[PathBuf::from("b.c")]);
        assert_eq!(touched, vec![PathBuf::from("b.o")]);
        assert_eq!(g.outputs_with(&touched), vec![PathBuf::from("lib.so")]);
        assert!(g.is_source(Path::new("./a.c")) && !g.is_source(Path::new("x.c")));
    }

    #[test]
    fn sources_that_include_a_changed_c_file_are_found_through_each_other() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().canonicalize().unwrap();
        let write = |rel: &str, text: &str| {
            let p = root.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        };
        // As glibc: a generic file, a sysdeps wrapper including it by its
        // tail, another by a relative path, one including that wrapper, and
        // files that include other things of similar names.
        write("stdlib/strtod_l.c", "int x;\n");
        write("stdlib/strtof_l.c", "#define F\n#include \"strtod_l.c\"\n");
        write("wcsmbs/wcstof_l.c", "# include <stdlib/strtof_l.c>\n");
        write(
            "sysdeps/ldbl/strtold_l.c",
            "#include \"../../stdlib/strtod_l.c\"\n",
        );
        write(
            "stdlib/wcstod_l.c",
            "#include <wcstod_l.h>\n#include \"xstrtod_l.c\"\n",
        );
        write(
            "stdlib/other.c",
            "// #include \"strtod_l.c\"\n#include <stdio.h>\n",
        );
        let p = |s: &str| root.join(s);
        let compile = |src: &str, obj: &str| Record::Compile {
            source: p(src),
            object: p(obj),
            cwd: root.clone(),
            compiler: "cc".into(),
            argv: vec![],
        };
        let log = vec![
            compile("stdlib/strtof_l.c", "b/strtof_l.os"),
            compile("wcsmbs/wcstof_l.c", "b/wcstof_l.os"),
            compile("sysdeps/ldbl/strtold_l.c", "b/strtold_l.os"),
            compile("stdlib/wcstod_l.c", "b/wcstod_l.os"),
            compile("stdlib/other.c", "b/other.os"),
        ];
        let g = Graph::new(&root, &log);
        let found = g.sources_including(&root, &[PathBuf::from("stdlib/strtod_l.c")]);
        assert_eq!(
            found,
            vec![
                PathBuf::from("stdlib/strtof_l.c"),
                PathBuf::from("sysdeps/ldbl/strtold_l.c"),
                PathBuf::from("wcsmbs/wcstof_l.c"),
            ]
        );
        // Headers are not followed; a file nobody includes has no includers.
        assert!(g
            .sources_including(&root, &[PathBuf::from("stdlib/wcstod_l.h")])
            .is_empty());
        assert!(g
            .sources_including(&root, &[PathBuf::from("stdlib/none.c")])
            .is_empty());
    }
}
