//! Exponential reconnect backoff with jitter (sans-IO: the caller supplies randomness).

use std::time::Duration;

/// Backoff state: doubles from `min` up to `max`; each delay is drawn from the upper half
/// of the current step, so a fleet that lost its coordinator at once does not return at once.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// New backoff between `min` and `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max: max.max(min),
            attempt: 0,
        }
    }

    /// The next delay; `unit` is a random number in `[0, 1)`.
    pub fn next_delay(&mut self, unit: f64) -> Duration {
        let factor = 2u32.saturating_pow(self.attempt.min(30));
        let step = self.min.saturating_mul(factor).min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let unit = unit.clamp(0.0, 1.0);
        step.mul_f64(0.5 + 0.5 * unit)
    }

    /// Back to the shortest delay (after a successful session).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_caps_jitters_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let upper: Vec<Duration> = (0..6).map(|_| b.next_delay(1.0)).collect();
        assert_eq!(
            upper.iter().map(|d| d.as_millis()).collect::<Vec<_>>(),
            vec![100, 200, 400, 800, 1000, 1000]
        );
        let lower = Backoff::new(Duration::from_millis(100), Duration::from_secs(1)).next_delay(0.0);
        assert_eq!(lower, Duration::from_millis(50));
        b.reset();
        assert_eq!(b.next_delay(1.0), Duration::from_millis(100));
    }
}
