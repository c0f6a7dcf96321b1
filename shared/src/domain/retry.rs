//! How many attempts a task gets and how long to wait between them: a pure
//! function of the attempt number (and a random draw for jitter).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Exponential backoff with full jitter: the wait before attempt `n + 1` is a
/// random duration in `[0, min(max, initial * multiplier^(n-1))]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    pub initial_ms: u64,
    pub multiplier: f64,
    pub max_ms: u64,
    /// Full jitter when true; the exact exponential value otherwise.
    pub jitter: bool,
}

impl Default for RetryPolicy {
    /// Three retries after the first attempt: 1 s, ×2, capped at 1 h, full jitter.
    fn default() -> Self {
        Self { max_attempts: 4, initial_ms: 1_000, multiplier: 2.0, max_ms: 3_600_000, jitter: true }
    }
}

impl RetryPolicy {
    /// The wait after failed attempt `attempt` (1-based), or `None` when no
    /// attempt is left. `unit` is a uniform draw in `[0, 1)`.
    pub fn delay_after(&self, attempt: u32, unit: f64) -> Option<Duration> {
        if attempt >= self.max_attempts {
            return None;
        }
        let exp = self.initial_ms as f64 * self.multiplier.powi(attempt.saturating_sub(1) as i32);
        let capped = exp.min(self.max_ms as f64);
        let ms = if self.jitter { capped * unit.clamp(0.0, 1.0) } else { capped };
        Some(Duration::from_millis(ms as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_policy_allows_three_retries_with_doubling_caps() {
        let p = RetryPolicy { jitter: false, ..RetryPolicy::default() };
        assert_eq!(p.delay_after(1, 0.5), Some(Duration::from_secs(1)));
        assert_eq!(p.delay_after(2, 0.5), Some(Duration::from_secs(2)));
        assert_eq!(p.delay_after(3, 0.5), Some(Duration::from_secs(4)));
        assert_eq!(p.delay_after(4, 0.5), None);
    }

    #[test]
    fn full_jitter_stays_within_the_exponential_bound() {
        let p = RetryPolicy::default();
        assert_eq!(p.delay_after(3, 0.0), Some(Duration::ZERO));
        assert_eq!(p.delay_after(3, 0.999_999), Some(Duration::from_millis(3_999)));
        assert_eq!(p.delay_after(2, 0.5), Some(Duration::from_millis(1_000)));
    }

    #[test]
    fn the_cap_bounds_late_attempts() {
        let p = RetryPolicy { max_attempts: 20, jitter: false, ..RetryPolicy::default() };
        assert_eq!(p.delay_after(19, 0.0), Some(Duration::from_secs(3600)));
    }
}
