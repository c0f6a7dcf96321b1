//! How many attempts a task gets and how long to wait between them: a pure
//! function of the attempt number (and a random draw for jitter).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A task's retry policy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RetryPolicy {
    /// Exponential backoff: the wait after attempt `n` is
    /// `min(max, initial * multiplier^(n-1))`, or a uniform draw below it with
    /// full jitter.
    Backoff {
        /// Attempts in all, the first included.
        max_attempts: u32,
        initial_ms: u64,
        multiplier: f64,
        max_ms: u64,
        jitter: bool,
    },
    /// Explicit waits: attempt `n + 1` follows attempt `n` after `intervals_ms[n - 1]`.
    /// An empty list means one attempt.
    Intervals { intervals_ms: Vec<u64> },
}

impl Default for RetryPolicy {
    /// Three retries after the first attempt: 1 s, ×2, capped at 1 h, full jitter.
    fn default() -> Self {
        Self::Backoff { max_attempts: 4, initial_ms: 1_000, multiplier: 2.0, max_ms: 3_600_000, jitter: true }
    }
}

impl RetryPolicy {
    /// The most attempts a task may ask for.
    pub const MAX_ATTEMPTS: u32 = 20;

    pub fn max_attempts(&self) -> u32 {
        match self {
            Self::Backoff { max_attempts, .. } => *max_attempts,
            Self::Intervals { intervals_ms } => intervals_ms.len() as u32 + 1,
        }
    }

    /// The wait after failed attempt `attempt` (1-based), or `None` when no
    /// attempt is left. `unit` is a uniform draw in `[0, 1)`.
    pub fn delay_after(&self, attempt: u32, unit: f64) -> Option<Duration> {
        if attempt >= self.max_attempts() {
            return None;
        }
        match self {
            Self::Backoff { initial_ms, multiplier, max_ms, jitter, .. } => {
                let exp = *initial_ms as f64 * multiplier.powi(attempt.saturating_sub(1) as i32);
                let capped = exp.min(*max_ms as f64);
                let ms = if *jitter { capped * unit.clamp(0.0, 1.0) } else { capped };
                Some(Duration::from_millis(ms as u64))
            }
            Self::Intervals { intervals_ms } => {
                intervals_ms.get(attempt as usize - 1).map(|ms| Duration::from_millis(*ms))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exact() -> RetryPolicy {
        RetryPolicy::Backoff { max_attempts: 4, initial_ms: 1_000, multiplier: 2.0, max_ms: 3_600_000, jitter: false }
    }

    #[test]
    fn default_policy_allows_three_retries_with_doubling_waits() {
        // The default is jittered: the largest draw gives just under each bound.
        let p = RetryPolicy::default();
        let top = 0.999_999;
        assert_eq!(p.delay_after(1, top), Some(Duration::from_millis(999)));
        assert_eq!(p.delay_after(2, top), Some(Duration::from_millis(1_999)));
        assert_eq!(p.delay_after(3, top), Some(Duration::from_millis(3_999)));
        assert_eq!(p.delay_after(4, top), None);
        assert_eq!(p.delay_after(1, 0.0), Some(Duration::ZERO), "full jitter");
        assert_eq!(p.max_attempts(), 4);
    }

    #[test]
    fn backoff_without_jitter_doubles_exactly() {
        let p = exact();
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
        let p = RetryPolicy::Backoff {
            max_attempts: 20,
            initial_ms: 1_000,
            multiplier: 2.0,
            max_ms: 3_600_000,
            jitter: false,
        };
        assert_eq!(p.delay_after(19, 0.0), Some(Duration::from_secs(3600)));
    }

    #[test]
    fn intervals_give_each_wait_and_an_empty_list_one_attempt() {
        let p = RetryPolicy::Intervals { intervals_ms: vec![60_000, 300_000] };
        assert_eq!(p.max_attempts(), 3);
        assert_eq!(p.delay_after(1, 0.9), Some(Duration::from_secs(60)));
        assert_eq!(p.delay_after(2, 0.9), Some(Duration::from_secs(300)));
        assert_eq!(p.delay_after(3, 0.9), None);
        let once = RetryPolicy::Intervals { intervals_ms: vec![] };
        assert_eq!(once.max_attempts(), 1);
        assert_eq!(once.delay_after(1, 0.5), None);
    }
}
