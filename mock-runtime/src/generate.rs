//! Deterministic "model": token counting, generated text and embeddings. Pure.
//!
//! A token is a whitespace-separated word: `"Hello, big world"` is 3 tokens. Generated text
//! is made of words taken from the prompt (lower-cased, punctuation trimmed), chosen by a
//! stable hash of the prompt, the choice index and the position, so the same request always
//! gets the same answer and `n` choices differ. An empty prompt generates `mock`.

/// FNV-1a, 64 bit: stable across runs and platforms (unlike `std`'s `RandomState`).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// Tokens in `text`: whitespace-separated words.
pub fn count_tokens(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

/// The words a completion of `prompt` is made of.
fn vocabulary(prompt: &str) -> Vec<String> {
    let words: Vec<String> = prompt
        .split_whitespace()
        .map(|w| {
            w.trim_matches(|c: char| !c.is_alphanumeric())
                .to_lowercase()
                .chars()
                .take(24)
                .collect::<String>()
        })
        .filter(|w| !w.is_empty())
        .collect();
    if words.is_empty() {
        vec!["mock".to_string()]
    } else {
        words
    }
}

/// The answer to one prompt for one choice: its token at any position, computed on demand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    words: Vec<String>,
    seed: u64,
}

impl Completion {
    /// The completion of `prompt` for choice `choice`.
    pub fn new(prompt: &str, choice: usize) -> Self {
        Completion {
            words: vocabulary(prompt),
            seed: fnv1a(prompt.as_bytes()) ^ (choice as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
        }
    }

    /// The token (word) at `position`.
    pub fn token(&self, position: usize) -> &str {
        let mixed = fnv1a(&(self.seed ^ (position as u64).wrapping_mul(0xff51_afd7_ed55_8ccd)).to_le_bytes());
        &self.words[(mixed % self.words.len() as u64) as usize]
    }

    /// The token at `position` as streamed: with a leading space except the first, so the
    /// concatenated deltas equal [`Completion::text`].
    pub fn delta(&self, position: usize) -> String {
        if position == 0 {
            self.token(0).to_string()
        } else {
            format!(" {}", self.token(position))
        }
    }

    /// The first `count` tokens joined by spaces.
    pub fn text(&self, count: usize) -> String {
        (0..count).map(|position| self.delta(position)).collect()
    }
}

/// The `count` tokens (words) a completion of `prompt` produces for choice `choice`.
#[cfg(test)]
fn completion_tokens(prompt: &str, choice: usize, count: usize) -> Vec<String> {
    let completion = Completion::new(prompt, choice);
    (0..count)
        .map(|position| completion.token(position).to_string())
        .collect()
}

/// A deterministic unit-length embedding of `text` with `dimensions` components.
pub fn embedding(text: &str, dimensions: usize) -> Vec<f32> {
    let seed = fnv1a(text.as_bytes());
    let raw: Vec<f64> = (0..dimensions)
        .map(|i| {
            let h = fnv1a(&(seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)).to_le_bytes());
            (h >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
        })
        .collect();
    let norm = raw.iter().map(|v| v * v).sum::<f64>().sqrt();
    raw.iter()
        .map(|v| if norm > 0.0 { (v / norm) as f32 } else { 0.0 })
        .collect()
}

/// Standard base64 (RFC 4648, padded): the `encoding_format: "base64"` of embeddings, which
/// encodes the little-endian `f32` bytes.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> shift) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_whitespace_words() {
        assert_eq!(count_tokens("Hello, big   world\n!"), 4);
        assert_eq!(count_tokens("  "), 0);
    }

    #[test]
    fn completions_are_deterministic_words_from_the_prompt() {
        let a = completion_tokens("The quick brown fox", 0, 8);
        assert_eq!(a, completion_tokens("The quick brown fox", 0, 8));
        assert_eq!(a.len(), 8);
        assert!(
            a.iter().all(|w| ["the", "quick", "brown", "fox"].contains(&w.as_str())),
            "{a:?}"
        );
        assert_ne!(a, completion_tokens("The quick brown fox", 1, 8), "choices differ");
        assert_eq!(completion_tokens("", 0, 2), vec!["mock", "mock"]);
        assert_eq!(completion_tokens("?! ...", 0, 1), vec!["mock"]);
        let text = Completion::new("The quick brown fox", 0).text(8);
        assert_eq!(text, a.join(" "));
        assert_eq!(count_tokens(&text), 8);
    }

    #[test]
    fn embeddings_are_unit_length_and_stable() {
        let e = embedding("hello", 16);
        assert_eq!(e.len(), 16);
        let norm: f32 = e.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "{norm}");
        assert_eq!(e, embedding("hello", 16));
        assert_ne!(e, embedding("world", 16));
    }

    #[test]
    fn base64_matches_rfc4648() {
        for (input, expected) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), expected);
        }
    }
}
