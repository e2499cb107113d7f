//! Which runtime kinds this node can launch: the kinds configured (`--runtime KIND=COMMAND`
//! or the `[runtimes]` table) whose program exists, plus those whose usual binary is on
//! `PATH` (vllm, tgi, triton, trtllm, ollama and llama-cpp; never sglang, which is started
//! as a Python module), plus `custom`, which needs no configuring: a custom spec carries
//! its own command.

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

/// A configured runtime whose program cannot be run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unusable {
    /// Runtime kind.
    pub kind: String,
    /// Its configured command.
    pub command: String,
    /// Why its program cannot be run.
    pub why: String,
}

/// The kinds this node advertises: those of `found` whose program resolves, plus `custom`
/// (always: its command is in the spec). The rest come back with why, to be logged; a
/// replica of such a kind fails with a reason naming its command.
pub fn usable(
    found: &BTreeMap<String, String>,
    path: Option<&std::ffi::OsStr>,
) -> (BTreeMap<String, String>, Vec<Unusable>) {
    let mut usable = BTreeMap::new();
    let mut unusable = Vec::new();
    for (kind, command) in found {
        let words = crate::runtime::process::split_command(command);
        let program = words.first().map(String::as_str).unwrap_or("");
        match crate::runtime::process::resolve_program(program, path) {
            Ok(_) => {
                usable.insert(kind.clone(), command.clone());
            }
            Err(why) => unusable.push(Unusable {
                kind: kind.clone(),
                command: command.clone(),
                why,
            }),
        }
    }
    usable
        .entry("custom".to_string())
        .or_insert_with(|| "(the spec's custom command)".to_string());
    (usable, unusable)
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

    #[test]
    fn only_kinds_whose_program_exists_are_advertised_and_custom_always_is() {
        let dir = tempfile::tempdir().unwrap();
        let found = BTreeMap::from([
            ("triton".to_string(), "/nonexistent/tritonserver".to_string()),
            ("vllm".to_string(), "sh -c 'exec vllm serve'".to_string()),
        ]);
        let path = std::env::var_os("PATH");
        let (usable, unusable) = usable(&found, path.as_deref());
        assert_eq!(usable.keys().collect::<Vec<_>>(), ["custom", "vllm"]);
        assert_eq!(unusable.len(), 1);
        assert_eq!(unusable[0].kind, "triton");
        assert!(
            unusable[0].why.contains("/nonexistent/tritonserver does not exist"),
            "{:?}",
            unusable
        );
        let (usable, unusable) = super::usable(
            &BTreeMap::from([("x".into(), "missing-bin".into())]),
            Some(dir.path().as_os_str()),
        );
        assert_eq!(usable.keys().collect::<Vec<_>>(), ["custom"]);
        assert!(unusable[0].why.contains("not found on PATH"), "{:?}", unusable);
    }
}
