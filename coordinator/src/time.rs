//! Wall-clock helpers (formatting only; the cores take `now` as an argument).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// RFC 3339 (UTC, seconds precision) for a time in ms since the epoch.
pub fn rfc3339_ms(ms: i64) -> String {
    // RFC 3339 ends at 9999-12-31T23:59:59Z; clamp rather than fail on an absurd stored value.
    const LAST_RFC3339_MS: i64 = 253_402_300_799_000;
    let t = UNIX_EPOCH + Duration::from_millis(ms.clamp(0, LAST_RFC3339_MS) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}
