//! Join tokens, kubeadm style: `ID.SECRET` (6 + 16 characters of `[a-z0-9]`). The id is
//! public (it names the token in logs); only the SHA-256 of the secret is stored.

use ring::rand::SecureRandom;

use crate::store::TokenRow;

/// Why a join token was refused. Messages are safe to send to the agent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not `ID.SECRET`.
    #[error("join token is malformed: expected ID.SECRET as printed by `pyxis token create`")]
    Malformed,
    /// No such token id.
    #[error("join token {id} is unknown (never created, or already pruned after expiry)")]
    Unknown {
        /// Token id.
        id: String,
    },
    /// The id exists but the secret is wrong.
    #[error("join token {id} has a wrong secret")]
    WrongSecret {
        /// Token id.
        id: String,
    },
    /// Past its expiry.
    #[error("join token {id} expired at {expired_at}; create a new one with `pyxis token create`")]
    Expired {
        /// Token id.
        id: String,
        /// RFC 3339 expiry.
        expired_at: String,
    },
    /// No uses left.
    #[error("join token {id} has no uses left; create a new one with `pyxis token create --uses N`")]
    UsedUp {
        /// Token id.
        id: String,
    },
}

const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// The system random generator failed (tokens are never made from a weaker source).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the system random number generator failed; cannot create a join token")]
pub struct RandomError;

pub(crate) fn random_string(len: usize) -> Result<String, RandomError> {
    let rng = ring::rand::SystemRandom::new();
    let mut out = String::with_capacity(len);
    let mut buf = [0u8; 64];
    while out.len() < len {
        rng.fill(&mut buf).map_err(|_| RandomError)?;
        // Rejection sampling keeps the distribution uniform (252 = 7 * 36).
        for b in buf {
            if b < 252 && out.len() < len {
                out.push(ALPHABET[(b % 36) as usize] as char);
            }
        }
    }
    Ok(out)
}

/// Hex SHA-256.
pub fn sha256_hex(text: &str) -> String {
    hex_lower(ring::digest::digest(&ring::digest::SHA256, text.as_bytes()).as_ref())
}

/// Lowercase hex, as `hex::encode` writes it, through its table (not its per-character
/// iterator): ids and hashes on the gateway's per-call path.
pub fn hex_lower(bytes: &[u8]) -> String {
    let mut out = vec![0u8; bytes.len() * 2];
    // Fails only when the lengths disagree, and they cannot.
    let _ = hex::encode_to_slice(bytes, &mut out);
    String::from_utf8(out).unwrap_or_default()
}

/// A freshly created token: the full text (shown once) and the row to store.
#[derive(Debug, Clone)]
pub struct NewToken {
    /// `ID.SECRET`.
    pub token: String,
    /// Row to store.
    pub row: TokenRow,
}

/// Creates a token valid until `expires_at_ms` for `uses` enrollments.
pub fn create(expires_at_ms: i64, uses: u32) -> Result<NewToken, RandomError> {
    let id = random_string(6)?;
    let secret = random_string(16)?;
    Ok(NewToken {
        token: format!("{id}.{secret}"),
        row: TokenRow {
            id,
            secret_sha256: sha256_hex(&secret),
            expires_at_ms,
            uses_left: i64::from(uses),
        },
    })
}

/// Splits `ID.SECRET`.
pub fn parse(token: &str) -> Result<(&str, &str), TokenError> {
    let (id, secret) = token.trim().split_once('.').ok_or(TokenError::Malformed)?;
    let valid = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| ALPHABET.contains(&b));
    if valid(id, 6) && valid(secret, 16) {
        Ok((id, secret))
    } else {
        Err(TokenError::Malformed)
    }
}

/// Checks a stored token against the presented secret at `now_ms` (does not consume it).
pub fn check(row: Option<&TokenRow>, id: &str, secret: &str, now_ms: i64) -> Result<(), TokenError> {
    let row = row.ok_or_else(|| TokenError::Unknown { id: id.to_string() })?;
    let presented = sha256_hex(secret);
    if !constant_time_eq(presented.as_bytes(), row.secret_sha256.as_bytes()) {
        return Err(TokenError::WrongSecret { id: id.to_string() });
    }
    if now_ms > row.expires_at_ms {
        return Err(TokenError::Expired {
            id: id.to_string(),
            expired_at: crate::time::rfc3339_ms(row.expires_at_ms),
        });
    }
    if row.uses_left <= 0 {
        return Err(TokenError::UsedUp { id: id.to_string() });
    }
    Ok(())
}

pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_lower_is_hex_encode() {
        for bytes in [&[][..], &[0u8, 0x0f, 0xa5, 0xff][..], &[7u8; 32][..]] {
            assert_eq!(hex_lower(bytes), hex::encode(bytes));
        }
        assert_eq!(
            sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn create_parse_check() {
        let new = create(1_000, 2).unwrap();
        let (id, secret) = parse(&new.token).unwrap();
        assert_eq!(id, new.row.id);
        assert_eq!(check(Some(&new.row), id, secret, 999), Ok(()));
        assert!(matches!(
            check(Some(&new.row), id, secret, 1_001),
            Err(TokenError::Expired { .. })
        ));
        assert!(matches!(
            check(Some(&new.row), id, "0000000000000000", 0),
            Err(TokenError::WrongSecret { .. })
        ));
        assert!(matches!(check(None, id, secret, 0), Err(TokenError::Unknown { .. })));
        let used = TokenRow {
            uses_left: 0,
            ..new.row.clone()
        };
        assert!(matches!(
            check(Some(&used), id, secret, 0),
            Err(TokenError::UsedUp { .. })
        ));
        for bad in [
            "",
            "abc",
            "abcdef.short",
            "ABCDEF.0123456789abcdef",
            "abcdef0123456789abcdef",
        ] {
            assert_eq!(parse(bad), Err(TokenError::Malformed), "{bad}");
        }
        assert_ne!(create(0, 1).unwrap().token, create(0, 1).unwrap().token);
    }
}
