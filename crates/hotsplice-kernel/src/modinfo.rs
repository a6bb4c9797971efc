use object::{Object, ObjectSection};

/// What a hotsplice kernel patch module says about itself (`.modinfo`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModInfo {
    /// Module name (the directory under /sys/kernel/livepatch).
    pub module: String,
    pub id: String,
    pub description: String,
    /// GNU build-id of the kernel it is for.
    pub build_id: String,
    /// `uname -r` of that kernel.
    pub release: String,
    /// The version the kernel reports once this patch is applied.
    pub effective: String,
}

/// Read the `.modinfo` of a livepatch module made by `hotsplice create --kernel`.
pub fn modinfo(ko: &[u8]) -> Result<ModInfo, String> {
    let file = object::File::parse(ko).map_err(|e| format!("not an ELF module: {e}"))?;
    let sec = file
        .section_by_name(".modinfo")
        .ok_or("no .modinfo section")?;
    let data = sec.data().map_err(|e| e.to_string())?;
    let mut map = std::collections::HashMap::new();
    for entry in data.split(|&b| b == 0) {
        let s = String::from_utf8_lossy(entry);
        if let Some((k, v)) = s.split_once('=') {
            map.insert(k.to_string(), v.to_string());
        }
    }
    let get = |k: &str| map.get(k).cloned();
    if get("livepatch").as_deref() != Some("Y") {
        return Err("not a livepatch module (no livepatch=Y)".into());
    }
    Ok(ModInfo {
        module: get("name").ok_or("no module name")?,
        id: get("hotsplice_id").ok_or("no hotsplice_id (not made by hotsplice create --kernel)")?,
        description: get("description").unwrap_or_default(),
        build_id: get("hotsplice_build_id").ok_or("no hotsplice_build_id")?,
        release: get("hotsplice_release").unwrap_or_default(),
        effective: get("hotsplice_effective").unwrap_or_default(),
    })
}
