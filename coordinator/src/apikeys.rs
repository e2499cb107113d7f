//! Tenant API keys for the OpenAI-compatible gateway: `Authorization: Bearer <key>` maps a
//! call to a tenant. A key is `pyxis-<id>-<secret>`: the id is public (listed, revoked by),
//! the secret is shown once at creation and stored only as its SHA-256.
//!
//! Sans-IO: creating, parsing and checking keys; the store keeps the rows and the API
//! serves them. The gateway that checks keys on every call comes with the gateway release.

use crate::tokens::{constant_time_eq, random_string, sha256_hex, RandomError};

const ID_LEN: usize = 8;
const SECRET_LEN: usize = 32;
const PREFIX: &str = "pyxis-";

/// A stored key (never the secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRow {
    /// Public id.
    pub id: String,
    /// The tenant its calls are billed and audited to.
    pub tenant: String,
    /// A label for people (`ci`, `notebook`).
    pub name: String,
    /// Hex SHA-256 of the secret.
    pub secret_sha256: String,
    /// Created at, ms since the epoch.
    pub created_ms: i64,
    /// Revoked at, if it was.
    pub revoked_ms: Option<i64>,
}

/// A new key: its full text (shown once) and the row to store.
#[derive(Debug, Clone)]
pub struct NewKey {
    /// `pyxis-<id>-<secret>`.
    pub key: String,
    /// The row.
    pub row: ApiKeyRow,
}

/// Creates a key for `tenant`.
pub fn create(tenant: &str, name: &str, now_ms: i64) -> Result<NewKey, RandomError> {
    let id = random_string(ID_LEN)?;
    let secret = random_string(SECRET_LEN)?;
    Ok(NewKey {
        key: format!("{PREFIX}{id}-{secret}"),
        row: ApiKeyRow {
            id,
            tenant: tenant.to_string(),
            name: name.to_string(),
            secret_sha256: sha256_hex(&secret),
            created_ms: now_ms,
            revoked_ms: None,
        },
    })
}

/// Splits a presented key into `(id, secret)`; `None` when it is not a Pyxis key.
pub fn parse(key: &str) -> Option<(&str, &str)> {
    let rest = key.trim().strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('-')?;
    let valid = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    (valid(id, ID_LEN) && valid(secret, SECRET_LEN)).then_some((id, secret))
}

/// Whether `secret` is the secret of `row` and the key is not revoked (constant time).
pub fn check(row: &ApiKeyRow, secret: &str) -> bool {
    row.revoked_ms.is_none() && constant_time_eq(sha256_hex(secret).as_bytes(), row.secret_sha256.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_checked_by_its_secret_and_never_after_revocation() {
        let new = create("research", "ci", 5).unwrap();
        assert!(new.key.starts_with("pyxis-"));
        let (id, secret) = parse(&new.key).unwrap();
        assert_eq!(id, new.row.id);
        assert_ne!(new.row.secret_sha256, secret, "only the hash is stored");
        assert!(check(&new.row, secret));
        assert!(!check(&new.row, &"a".repeat(SECRET_LEN)));
        let revoked = ApiKeyRow {
            revoked_ms: Some(6),
            ..new.row.clone()
        };
        assert!(!check(&revoked, secret));
        assert_ne!(create("research", "ci", 5).unwrap().key, new.key);
    }

    #[test]
    fn other_strings_are_not_keys() {
        for text in [
            "",
            "pyxis-",
            "sk-abc",
            "pyxis-abc-def",
            &format!("pyxis-{}-{}", "A".repeat(8), "b".repeat(32)),
        ] {
            assert!(parse(text).is_none(), "{text}");
        }
    }
}
