//! Arrival times at a target, read as rates: the worst 1-s window and the
//! sustained rate. The flow tests assert on them and `make bench` prints them.

/// The most arrivals in any 1-s window that starts at an arrival at or after `from`.
pub fn max_per_second(sorted_ms: &[i64], from: i64) -> usize {
    let mut best = 0;
    let mut end = 0;
    for (i, &start) in sorted_ms.iter().enumerate() {
        end = end.max(i);
        while end < sorted_ms.len() && sorted_ms[end] < start + 1000 {
            end += 1;
        }
        if start >= from {
            best = best.max(end - i);
        }
    }
    best
}

/// Requests per second over the middle 80 % of the arrivals: (n − 1) / (t_last − t_first).
pub fn sustained_rate(sorted_ms: &[i64]) -> f64 {
    let n = sorted_ms.len();
    let middle = &sorted_ms[n / 10..n - n / 10];
    let span = (middle[middle.len() - 1] - middle[0]) as f64 / 1000.0;
    (middle.len() - 1) as f64 / span
}

/// Arrivals counted per whole second from the first one.
pub fn per_second(sorted_ms: &[i64]) -> Vec<usize> {
    let mut counts = Vec::new();
    for t in sorted_ms {
        let i = ((t - sorted_ms[0]) / 1000) as usize;
        counts.resize(counts.len().max(i + 1), 0);
        counts[i] += 1;
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worst_second_and_the_sustained_rate_come_from_arrival_times() {
        assert_eq!(max_per_second(&[0, 100, 999, 1000, 1500, 2600], 0), 3);
        assert_eq!(max_per_second(&[0, 10, 20, 30, 1500], 1000), 1, "windows before `from` do not count");
        let even: Vec<i64> = (0..21).map(|i| i * 50).collect();
        assert!((sustained_rate(&even) - 20.0).abs() < 1e-9);
        assert_eq!(per_second(&[0, 10, 1000, 2500]), [2, 1, 1]);
    }
}
