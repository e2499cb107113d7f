//! The node's identity on disk: CA certificate, node certificate and node key, all 0600
//! in `DATA_DIR/identity/` (0700). The key is generated here and never leaves the node.

use std::{
    fs,
    io::Write,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};

/// Why the identity could not be loaded or stored.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// File-system failure.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// Which file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// Some identity files exist, others are missing.
    #[error("the node identity in {dir} is incomplete (missing {missing}); remove that directory and join again with a new token")]
    Incomplete {
        /// Identity directory.
        dir: PathBuf,
        /// Missing files.
        missing: String,
    },
    /// A stored file is not valid PEM.
    #[error("{path} is not a valid {what}: {reason}; remove DATA_DIR/identity and join again with a new token")]
    Corrupt {
        /// Which file.
        path: PathBuf,
        /// What it should hold.
        what: &'static str,
        /// Parser message.
        reason: String,
    },
}

/// A node identity: PEM texts as stored.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Cluster CA certificate.
    pub ca_pem: String,
    /// Node certificate.
    pub cert_pem: String,
    /// Node private key.
    pub key_pem: String,
    /// The node name the certificate was issued for (`identity/node-name`).
    pub node_name: String,
}

impl Identity {
    /// The directory holding the identity files.
    pub fn dir(data_dir: &Path) -> PathBuf {
        data_dir.join("identity")
    }

    /// Loads a stored identity; `Ok(None)` if the node has not joined yet.
    pub fn load(data_dir: &Path) -> Result<Option<Self>, IdentityError> {
        let dir = Self::dir(data_dir);
        let read = |name: &str| -> Result<Option<String>, IdentityError> {
            let path = dir.join(name);
            match fs::read_to_string(&path) {
                Ok(text) => Ok(Some(text)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(source) => Err(IdentityError::Io {
                    action: "cannot read",
                    path,
                    source,
                }),
            }
        };
        let files = ["ca.pem", "node.pem", "node.key", "node-name"];
        let texts = files.iter().map(|f| read(f)).collect::<Result<Vec<_>, _>>()?;
        if texts.iter().all(Option::is_none) {
            return Ok(None);
        }
        let missing: Vec<&str> = files
            .iter()
            .zip(&texts)
            .filter(|(_, t)| t.is_none())
            .map(|(f, _)| *f)
            .collect();
        if !missing.is_empty() {
            return Err(IdentityError::Incomplete {
                dir,
                missing: missing.join(", "),
            });
        }
        let mut texts = texts.into_iter().flatten();
        let mut next = || texts.next().unwrap_or_default();
        let identity = Self {
            ca_pem: next(),
            cert_pem: next(),
            key_pem: next(),
            node_name: next().trim().to_string(),
        };
        identity.client_config()?;
        let key_path = dir.join("node.key");
        if let Ok(meta) = fs::metadata(&key_path) {
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(
                    path = %key_path.display(),
                    mode = format!("{:o}", meta.permissions().mode() & 0o777),
                    "the node key is readable by other users; fix with chmod 600"
                );
            }
        }
        Ok(Some(identity))
    }

    /// Writes the identity with mode 0600 files in a 0700 directory.
    pub fn save(&self, data_dir: &Path) -> Result<(), IdentityError> {
        let dir = Self::dir(data_dir);
        fs::create_dir_all(&dir).map_err(|source| IdentityError::Io {
            action: "cannot create",
            path: dir.clone(),
            source,
        })?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).map_err(|source| IdentityError::Io {
            action: "cannot chmod",
            path: dir.clone(),
            source,
        })?;
        for (name, text) in [
            ("ca.pem", &self.ca_pem),
            ("node.pem", &self.cert_pem),
            ("node.key", &self.key_pem),
            ("node-name", &format!("{}\n", self.node_name)),
        ] {
            write_private(&dir.join(name), text)?;
        }
        Ok(())
    }

    /// SHA-256 of the stored CA certificate (what `--ca-hash` pins).
    pub fn ca_sha256(&self) -> Option<[u8; 32]> {
        let der = CertificateDer::from_pem_slice(self.ca_pem.as_bytes()).ok()?;
        ring::digest::digest(&ring::digest::SHA256, der.as_ref())
            .as_ref()
            .try_into()
            .ok()
    }

    /// Parsed parts for the mTLS client.
    pub fn client_config(&self) -> Result<quinn::ClientConfig, IdentityError> {
        let dir = PathBuf::from("identity");
        let corrupt = |file: &str, what: &'static str, reason: String| IdentityError::Corrupt {
            path: dir.join(file),
            what,
            reason,
        };
        let ca = CertificateDer::from_pem_slice(self.ca_pem.as_bytes())
            .map_err(|e| corrupt("ca.pem", "CA certificate", e.to_string()))?;
        let cert = CertificateDer::from_pem_slice(self.cert_pem.as_bytes())
            .map_err(|e| corrupt("node.pem", "node certificate", e.to_string()))?;
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| corrupt("node.key", "node key", e.to_string()))?;
        pyxis_transport::tls::mtls_client_config(ca, cert, key)
            .map_err(|e| corrupt("node.pem", "node certificate and key pair", e.to_string()))
    }
}

/// Writes `text` to `path` atomically with mode 0600.
pub fn write_private(path: &Path, text: &str) -> Result<(), IdentityError> {
    let io = |action: &'static str, source: std::io::Error| IdentityError::Io {
        action,
        path: path.to_path_buf(),
        source,
    };
    let mut tmp_name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    // A stale temporary file might carry a looser mode: remove it and create afresh.
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("cannot remove a stale temporary file for", e)),
    }
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| io("cannot create", e))?;
    file.write_all(text.as_bytes()).map_err(|e| io("cannot write", e))?;
    file.sync_all().map_err(|e| io("cannot sync", e))?;
    fs::rename(&tmp, path).map_err(|e| io("cannot rename into", e))?;
    if let Some(dir) = path.parent() {
        // Make the rename itself durable.
        if let Ok(dir) = fs::File::open(dir) {
            let _ = dir.sync_all();
        }
    }
    Ok(())
}
