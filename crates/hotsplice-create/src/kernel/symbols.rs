//! What the target kernel knows about its symbols: which are exported to
//! modules (`Module.symvers`), and all of them in order (`System.map` or
//! `/proc/kallsyms`), which gives the position livepatch needs when two
//! local symbols share a name.

use crate::{io, CreateError};
use std::collections::{HashMap, HashSet};
use std::path::Path;

#[derive(Debug, Clone)]
pub struct KSym {
    pub addr: u64,
    /// `None` for vmlinux.
    pub module: Option<String>,
}

#[derive(Debug, Default)]
pub struct KernelSymbols {
    /// Symbols exported by vmlinux.
    exported: HashSet<String>,
    /// Symbols exported by modules, with the module's name.
    module_exports: HashMap<String, String>,
    all: Vec<KSym>,
    by_name: HashMap<String, Vec<usize>>,
}

impl KernelSymbols {
    pub fn load(symvers: &Path, map: Option<&Path>) -> Result<KernelSymbols, CreateError> {
        let mut k = KernelSymbols::default();
        let text = std::fs::read_to_string(symvers)
            .map_err(io(format!("Module.symvers {}", symvers.display())))?;
        for l in text.lines() {
            let mut f = l.split('\t').skip(1);
            let (Some(name), Some(owner)) = (f.next(), f.next()) else {
                continue;
            };
            if owner == "vmlinux" {
                k.exported.insert(name.to_string());
            } else {
                // `sound/core/snd-pcm`: module `snd_pcm`, as the kernel
                // names it.
                let module = owner.rsplit('/').next().unwrap_or(owner).replace('-', "_");
                k.module_exports.insert(name.to_string(), module);
            }
        }
        if let Some(map) = map {
            let text = std::fs::read_to_string(map)
                .map_err(io(format!("symbol map {}", map.display())))?;
            for l in text.lines() {
                let mut f = l.split_whitespace();
                let (Some(addr), Some(_ty), Some(name)) = (f.next(), f.next(), f.next()) else {
                    continue;
                };
                let module = f
                    .next()
                    .map(|m| m.trim_start_matches('[').trim_end_matches(']').to_string());
                k.by_name
                    .entry(name.to_string())
                    .or_default()
                    .push(k.all.len());
                k.all.push(KSym {
                    addr: u64::from_str_radix(addr, 16).unwrap_or(0),
                    module,
                });
            }
        }
        Ok(k)
    }

    /// Exported by vmlinux: the module loader resolves it.
    pub fn exported(&self, name: &str) -> bool {
        self.exported.contains(name)
    }

    /// The module that exports `name`, if one does. Such references are
    /// made livepatch relocations, so that the patch does not depend on
    /// the module (and loads before it).
    pub fn exported_by_module(&self, name: &str) -> Option<&str> {
        self.module_exports.get(name).map(String::as_str)
    }

    pub fn has_map(&self) -> bool {
        !self.all.is_empty()
    }

    fn candidates(&self, name: &str, module: Option<&str>) -> Vec<&KSym> {
        self.by_name
            .get(name)
            .map(|v| {
                v.iter()
                    .map(|&i| &self.all[i])
                    .filter(|s| s.module.as_deref() == module)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Which object defines `name` (vmlinux preferred), if the map says.
    pub fn owner_of(&self, name: &str) -> Option<Option<String>> {
        let v = self.by_name.get(name)?;
        if v.iter().any(|&i| self.all[i].module.is_none()) {
            return Some(None);
        }
        v.first().map(|&i| self.all[i].module.clone())
    }

    /// The livepatch position of `name` in `module` (0: unique). When
    /// several local symbols share the name, the one nearest to a symbol of
    /// the same object file with a unique name (`neighbours`) is meant.
    pub fn position(
        &self,
        name: &str,
        module: Option<&str>,
        neighbours: &[String],
    ) -> Result<u64, CreateError> {
        let c = self.candidates(name, module);
        if c.len() <= 1 {
            return Ok(0);
        }
        let anchors: Vec<u64> = neighbours
            .iter()
            .filter_map(|n| {
                let v = self.candidates(n, module);
                (v.len() == 1).then(|| v[0].addr)
            })
            .collect();
        if anchors.is_empty() {
            return Err(CreateError::Unsupported(format!(
                "`{name}` is defined {} times in {} and nothing tells which one the patch means",
                c.len(),
                module.unwrap_or("vmlinux")
            )));
        }
        let dist = |s: &KSym| {
            anchors
                .iter()
                .map(|a| a.abs_diff(s.addr))
                .min()
                .unwrap_or(u64::MAX)
        };
        let best = c
            .iter()
            .enumerate()
            .min_by_key(|(_, s)| dist(s))
            .map(|(i, _)| i)
            .unwrap_or(0);
        Ok(best as u64 + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn syms(map: &str) -> KernelSymbols {
        let dir = tempfile::tempdir().unwrap();
        let symvers = dir.path().join("Module.symvers");
        std::fs::write(
            &symvers,
            "0x1\tprintk\tvmlinux\tEXPORT_SYMBOL\t\n0x2\tsnd_pcm_new\tsound/core/snd-pcm\tEXPORT_SYMBOL\t\n",
        )
        .unwrap();
        let m = dir.path().join("System.map");
        std::fs::write(&m, map).unwrap();
        KernelSymbols::load(&symvers, Some(&m)).unwrap()
    }

    const MAP: &str = "\
ffffffff81000100 t show_a
ffffffff81000200 t helper
ffffffff81000300 T first_file_global
ffffffff81500100 t helper
ffffffff81500200 T second_file_global
ffffffffc0000100 t helper\t[ext4]
";

    #[test]
    fn unique_local_has_position_zero() {
        assert_eq!(syms(MAP).position("show_a", None, &[]).unwrap(), 0);
    }

    #[test]
    fn same_named_locals_are_told_apart_by_their_neighbours() {
        let k = syms(MAP);
        let second = ["second_file_global".to_string()];
        let first = ["first_file_global".to_string()];
        assert_eq!(k.position("helper", None, &second).unwrap(), 2);
        assert_eq!(k.position("helper", None, &first).unwrap(), 1);
        // The module's own symbol is counted in the module only.
        assert_eq!(k.position("helper", Some("ext4"), &[]).unwrap(), 0);
        assert!(k.position("helper", None, &[]).is_err());
        assert!(k.exported("printk") && !k.exported("helper"));
        assert!(!k.exported("snd_pcm_new"));
        assert_eq!(k.exported_by_module("snd_pcm_new"), Some("snd_pcm"));
        assert_eq!(k.owner_of("helper"), Some(None));
    }
}
