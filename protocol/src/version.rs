//! Protocol-version ranges and their negotiation.

use serde::{Deserialize, Serialize};

/// The protocol versions this build speaks. Bump `max` when a message changes shape; raise
/// `min` only when support for an old shape is removed on purpose.
pub const SUPPORTED_VERSIONS: VersionRange = VersionRange { min: 1, max: 1 };

/// An inclusive range of protocol versions one side speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionRange {
    /// Lowest version spoken.
    pub min: u16,
    /// Highest version spoken.
    pub max: u16,
}

impl VersionRange {
    /// Whether `version` lies in this range.
    pub fn contains(&self, version: u16) -> bool {
        self.min <= version && version <= self.max
    }
}

impl std::fmt::Display for VersionRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.min == self.max {
            write!(f, "{}", self.min)
        } else {
            write!(f, "{}..={}", self.min, self.max)
        }
    }
}

/// Why two peers could not agree on a protocol version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VersionError {
    /// The two ranges do not overlap; the message says what each side speaks.
    #[error("incompatible protocol versions: the agent speaks {agent}, the coordinator speaks {coordinator}; upgrade the older side")]
    Incompatible {
        /// What the agent offered.
        agent: VersionRange,
        /// What the coordinator speaks.
        coordinator: VersionRange,
    },
    /// The agent sent a range whose minimum is above its maximum.
    #[error("invalid protocol version range {min}..={max} (min above max)")]
    InvalidRange {
        /// Offered minimum.
        min: u16,
        /// Offered maximum.
        max: u16,
    },
}

/// Picks the highest version both sides speak.
pub fn negotiate(agent: VersionRange, coordinator: VersionRange) -> Result<u16, VersionError> {
    if agent.min > agent.max {
        return Err(VersionError::InvalidRange {
            min: agent.min,
            max: agent.max,
        });
    }
    let high = agent.max.min(coordinator.max);
    let low = agent.min.max(coordinator.min);
    if low > high {
        return Err(VersionError::Incompatible { agent, coordinator });
    }
    Ok(high)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(min: u16, max: u16) -> VersionRange {
        VersionRange { min, max }
    }

    #[test]
    fn picks_highest_common_version() {
        assert_eq!(negotiate(r(1, 3), r(2, 5)), Ok(3));
        assert_eq!(negotiate(r(1, 1), r(1, 1)), Ok(1));
        assert_eq!(negotiate(r(4, 9), r(1, 5)), Ok(5));
    }

    #[test]
    fn disjoint_ranges_name_both_sides() {
        let err = negotiate(r(3, 4), r(1, 2)).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("agent speaks 3..=4"), "{text}");
        assert!(text.contains("coordinator speaks 1..=2"), "{text}");
    }

    #[test]
    fn inverted_range_is_rejected() {
        assert_eq!(
            negotiate(r(5, 1), r(1, 9)),
            Err(VersionError::InvalidRange { min: 5, max: 1 })
        );
    }
}
