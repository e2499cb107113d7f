//! Which runtime kinds this node can launch: the kinds configured (`--runtime KIND=COMMAND`
//! or the `[runtimes]` table) plus those whose usual binary is on `PATH`.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

/// The binary each runtime kind installs, as looked up on `PATH`. SGLang is started as a
/// Python module and `custom` is described by the manifest, so neither has one.
pub const RUNTIME_BINARIES: &[(&str, &str)] = &[
    ("vllm", "vllm"),
    ("tgi", "text-generation-launcher"),
    ("triton", "tritonserver"),
    ("trtllm", "trtllm-serve"),
    ("ollama", "ollama"),
    ("llama-cpp", "llama-server"),
];

/// How a kind will be launched: the configured command or the binary found on `PATH`.
pub fn discover(configured: &BTreeMap<String, String>, path: Option<&std::ffi::OsStr>) -> BTreeMap<String, String> {
    let mut found = configured.clone();
    let dirs: Vec<PathBuf> = path.map(|p| std::env::split_paths(p).collect()).unwrap_or_default();
    for (kind, binary) in RUNTIME_BINARIES {
        if found.contains_key(*kind) {
            continue;
        }
        if let Some(full) = dirs.iter().map(|d| d.join(binary)).find(|p| is_executable(p)) {
            found.insert((*kind).to_string(), full.display().to_string());
        }
    }
    found
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_kinds_win_and_path_binaries_are_found() {
        let dir = tempfile::tempdir().unwrap();
        for (name, mode) in [("llama-server", 0o755), ("ollama", 0o644), ("vllm", 0o755)] {
            let path = dir.path().join(name);
            std::fs::write(&path, "#!/bin/sh\n").unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        let mut configured = BTreeMap::new();
        configured.insert("vllm".to_string(), "/opt/vllm/bin/vllm serve".to_string());
        let found = discover(&configured, Some(dir.path().as_os_str()));
        assert_eq!(found.get("vllm").map(String::as_str), Some("/opt/vllm/bin/vllm serve"));
        assert_eq!(
            found.get("llama-cpp"),
            Some(&dir.path().join("llama-server").display().to_string())
        );
        assert!(!found.contains_key("ollama"), "not executable");
        assert!(!found.contains_key("tgi"));
        assert_eq!(discover(&BTreeMap::new(), None), BTreeMap::new());
    }
}
