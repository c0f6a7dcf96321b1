//! When a task runs: now, at a time (a delay resolves to a time), or by cron
//! in a time zone, with the firings EventBridge Scheduler makes across
//! daylight-saving changes. How a schedule is written for Scheduler is the
//! Scheduler adapter's business (`schedules.rs`).

use std::collections::BTreeSet;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::EpochMillis;

/// A validated schedule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Schedule {
    /// Send as soon as possible.
    Now,
    /// Send at this time (a `delay` is resolved to its time at creation).
    At { at: EpochMillis },
    /// Send on every firing of a 5-field cron in an IANA time zone.
    Cron(CronSchedule),
}

/// A recurring schedule: standard 5-field cron (minute hour day-of-month month
/// day-of-week) evaluated in `timezone`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CronSchedule {
    pub expression: String,
    pub timezone: String,
}

const DOW_NAMES: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];
const MONTH_NAMES: [&str; 12] = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"];

impl CronSchedule {
    /// Validates a cron expression and time zone at time `now` (a pattern must
    /// fire after it); the error is the rule broken.
    pub fn parse(expression: &str, timezone: &str, now: EpochMillis) -> Result<Self, String> {
        let fields: Vec<&str> = expression.split_whitespace().collect();
        if fields.len() != 5 {
            return Err("must have 5 fields: minute hour day-of-month month day-of-week".into());
        }
        if let Some(bad) = expression.chars().find(|c| !(c.is_ascii_alphanumeric() || " *,-/".contains(*c))) {
            return Err(format!("`{bad}` is not supported (use numbers, names, `*`, `,`, `-`, `/`)"));
        }
        expand(fields[0], 0, 59, &[]).map_err(|e| format!("minute: {e}"))?;
        expand(fields[1], 0, 23, &[]).map_err(|e| format!("hour: {e}"))?;
        let dom = expand(fields[2], 1, 31, &[]).map_err(|e| format!("day-of-month: {e}"))?;
        expand(fields[3], 1, 12, &MONTH_NAMES).map_err(|e| format!("month: {e}"))?;
        let dow = expand(fields[4], 0, 7, &DOW_NAMES).map_err(|e| format!("day-of-week: {e}"))?;
        if dom.len() < 31 && normalise_dow(&dow).len() < 7 {
            return Err(
                "cannot restrict both day-of-month and day-of-week (EventBridge Scheduler needs one of them to be `*`)"
                    .into(),
            );
        }
        jiff::tz::TimeZone::get(timezone).map_err(|_| format!("time zone `{timezone}` is not an IANA time zone"))?;
        croner::Cron::from_str(expression).map_err(|e| e.to_string())?;
        let s = Self { expression: fields.join(" "), timezone: timezone.to_owned() };
        // A pattern such as `0 0 31 2 *` never fires.
        if s.next_after(now).is_none() {
            return Err("never fires".into());
        }
        Ok(s)
    }

    /// The five fields: minute, hour, day-of-month, month, day-of-week.
    pub fn fields(&self) -> [&str; 5] {
        let mut f = self.expression.split_whitespace();
        std::array::from_fn(|_| f.next().unwrap_or("*"))
    }

    /// The days of the week the schedule is restricted to (0 is Sunday), or
    /// `None` when every day is allowed.
    pub fn days_of_week(&self) -> Option<BTreeSet<u8>> {
        let days = normalise_dow(&expand(self.fields()[4], 0, 7, &DOW_NAMES).unwrap_or_default());
        (days.len() < 7).then_some(days)
    }

    /// The first firing strictly after `after`, as EventBridge Scheduler fires:
    /// a wall-clock time that a spring-forward gap skips does not fire that
    /// day, and one that an autumn fall-back repeats fires once, at its first
    /// instant. (croner moves a gap time to the end of the gap and fires an
    /// interval pattern on both instants of a repeated time: those candidates
    /// are passed over.)
    pub fn next_after(&self, after: EpochMillis) -> Option<EpochMillis> {
        let cron = croner::Cron::from_str(&self.expression).ok()?;
        let tz = jiff::tz::TimeZone::get(&self.timezone).ok()?;
        let mut from = jiff::Timestamp::from_millisecond(after).ok()?.to_zoned(tz.clone());
        // Candidates passed over are at most the gap's or the repeated hour's
        // few matches; the bound only guards against a pathological zone.
        for _ in 0..1_000 {
            let next = cron.find_next_occurrence(&from, false).ok()?;
            if fires_on_scheduler(&cron, &tz, &next) {
                return Some(next.timestamp().as_millisecond());
            }
            from = next;
        }
        None
    }
}

/// Whether croner's candidate is a firing EventBridge Scheduler makes: its
/// wall-clock time is one the pattern names (not a gap time carried past the
/// gap), and it is the first instant of that wall-clock time.
fn fires_on_scheduler(cron: &croner::Cron, tz: &jiff::tz::TimeZone, candidate: &jiff::Zoned) -> bool {
    let named = cron.is_time_matching(candidate).unwrap_or(false);
    let first = tz
        .to_ambiguous_zoned(candidate.datetime())
        .earlier()
        .is_ok_and(|earliest| earliest.timestamp() == candidate.timestamp());
    named && first
}

/// A wait too long for an SQS delay, handed to the Scheduler: a one-time
/// schedule fires at `fire_at` and its message waits `delay` in SQS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Handoff {
    /// When the one-time schedule fires: a whole second, `early` or a little
    /// more before the due time (Scheduler's `at()` has whole seconds).
    pub fire_at: EpochMillis,
    /// The SQS delay of the message it sends: it ends on the first second
    /// boundary not before the due time, so the task never arrives early.
    pub delay: Duration,
}

/// How a task due at `due` is handed to the Scheduler so that the Scheduler's
/// own lateness (up to `early`) is absorbed by the SQS delay.
pub fn scheduler_handoff(due: EpochMillis, early: Duration) -> Handoff {
    let fire_s = (due - early.as_millis() as i64).div_euclid(1000);
    let arrive_s = (due + 999).div_euclid(1000);
    Handoff { fire_at: fire_s * 1000, delay: Duration::from_secs((arrive_s - fire_s) as u64) }
}

/// Day 7 is Sunday too.
fn normalise_dow(days: &BTreeSet<u8>) -> BTreeSet<u8> {
    days.iter().map(|d| d % 7).collect()
}

/// The values a cron field matches.
fn expand(field: &str, min: u8, max: u8, names: &[&str]) -> Result<BTreeSet<u8>, String> {
    let value = |s: &str| -> Result<u8, String> {
        if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(s)) {
            return Ok(i as u8 + min);
        }
        s.parse::<u8>().ok().filter(|v| (min..=max).contains(v)).ok_or_else(|| format!("`{s}` is not in {min}-{max}"))
    };
    let mut out = BTreeSet::new();
    for part in field.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => {
                (r, s.parse::<u8>().ok().filter(|s| *s > 0).ok_or_else(|| format!("bad step in `{part}`"))?)
            }
            None => (part, 1),
        };
        let (lo, hi) = match range {
            "*" => (min, max),
            r => match r.split_once('-') {
                Some((a, b)) => (value(a)?, value(b)?),
                None if step > 1 => (value(r)?, max),
                None => (value(r)?, value(r)?),
            },
        };
        if lo > hi {
            return Err(format!("range `{range}` runs backwards"));
        }
        out.extend((lo..=hi).step_by(step as usize));
    }
    Ok(out)
}

/// Parses a duration: `"90s"`, `"5m"`, `"2h"`, `"1d"`, `"250ms"`, or a number of seconds.
pub fn parse_duration(v: &serde_json::Value) -> Result<Duration, String> {
    if let Some(secs) = v.as_u64() {
        return Ok(Duration::from_secs(secs));
    }
    let s = v.as_str().ok_or("must be a number of seconds or a string such as \"90s\", \"5m\", \"2h\"")?;
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("`{s}` is not a duration such as \"90s\", \"5m\", \"2h\""))?;
    let ms = match unit {
        "ms" => 1,
        "s" | "" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("`{s}` has an unknown unit (use ms, s, m, h or d)")),
    };
    n.checked_mul(ms).map(Duration::from_millis).ok_or_else(|| format!("`{s}` is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-11-22T00:00:00Z: tests never read the wall clock.
    const NOW: EpochMillis = 1_795_305_600_000;

    fn ms(rfc3339: &str) -> EpochMillis {
        jiff::Timestamp::from_str(rfc3339).expect("time").as_millisecond()
    }

    #[test]
    fn durations_accept_units_and_plain_seconds() {
        assert_eq!(parse_duration(&serde_json::json!("90s")), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration(&serde_json::json!("5m")), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration(&serde_json::json!("2h")), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration(&serde_json::json!(45)), Ok(Duration::from_secs(45)));
        assert_eq!(parse_duration(&serde_json::json!("250ms")), Ok(Duration::from_millis(250)));
        assert!(parse_duration(&serde_json::json!("5 minutes")).is_err());
        assert!(parse_duration(&serde_json::json!("-5s")).is_err());
        assert!(parse_duration(&serde_json::json!(true)).is_err());
    }

    #[test]
    fn cron_fires_in_its_time_zone() {
        let c = CronSchedule::parse("0 10 * * *", "Asia/Shanghai", NOW).expect("valid");
        // 10:00 in Shanghai is 02:00 UTC.
        assert_eq!(c.next_after(ms("2026-11-22T00:00:00Z")), Some(ms("2026-11-22T02:00:00Z")));
        assert_eq!(c.next_after(ms("2026-11-22T02:00:00Z")), Some(ms("2026-11-23T02:00:00Z")));
    }

    #[test]
    fn a_cron_time_in_the_spring_forward_gap_is_skipped_that_day() {
        // Berlin 2026-03-29: 02:00 CET jumps to 03:00 CEST, so 02:30 does not exist.
        let c = CronSchedule::parse("30 2 * * *", "Europe/Berlin", NOW).expect("valid");
        assert_eq!(c.next_after(ms("2026-03-28T00:00:00Z")), Some(ms("2026-03-28T01:30:00Z")));
        // 02:30 CEST on the 30th: no firing at 03:00 CEST on the 29th.
        assert_eq!(c.next_after(ms("2026-03-28T01:30:00Z")), Some(ms("2026-03-30T00:30:00Z")));
        // A pattern that names times around the gap keeps those.
        let half_hourly = CronSchedule::parse("*/30 * * * *", "Europe/Berlin", NOW).expect("valid");
        assert_eq!(half_hourly.next_after(ms("2026-03-29T00:30:00Z")), Some(ms("2026-03-29T01:00:00Z")));
    }

    #[test]
    fn a_cron_time_in_the_repeated_autumn_hour_fires_once_at_its_first_instant() {
        // Berlin 2026-10-25: 03:00 CEST falls back to 02:00 CET, so 02:30 happens twice.
        let c = CronSchedule::parse("30 2 * * *", "Europe/Berlin", NOW).expect("valid");
        assert_eq!(c.next_after(ms("2026-10-24T12:00:00Z")), Some(ms("2026-10-25T00:30:00Z")));
        assert_eq!(c.next_after(ms("2026-10-25T00:30:00Z")), Some(ms("2026-10-26T01:30:00Z")));
        // An interval pattern does not repeat the hour either: 02:00 and 02:30 CET are passed over.
        let half_hourly = CronSchedule::parse("*/30 * * * *", "Europe/Berlin", NOW).expect("valid");
        assert_eq!(half_hourly.next_after(ms("2026-10-25T00:30:00Z")), Some(ms("2026-10-25T02:00:00Z")));
    }

    #[test]
    fn the_scheduler_handoff_fires_early_and_arrives_on_the_first_second_not_before_due() {
        let h = scheduler_handoff(ms("2026-11-22T02:00:00.250Z"), Duration::from_secs(60));
        assert_eq!(h.fire_at, ms("2026-11-22T01:59:00Z"));
        // 01:59:00 + 61 s = 02:00:01, the first whole second not before 02:00:00.250.
        assert_eq!(h.delay, Duration::from_secs(61));
        let exact = scheduler_handoff(ms("2026-11-22T02:00:00Z"), Duration::from_secs(60));
        assert_eq!((exact.fire_at, exact.delay), (ms("2026-11-22T01:59:00Z"), Duration::from_secs(60)));
        let odd = scheduler_handoff(ms("2026-11-22T02:00:00Z"), Duration::from_millis(1_500));
        assert_eq!((odd.fire_at, odd.delay), (ms("2026-11-22T01:59:58Z"), Duration::from_secs(2)));
    }

    #[test]
    fn cron_fields_and_days_of_week_read_back() {
        let weekdays = CronSchedule::parse("*/15 9-17 * * MON-FRI", "UTC", NOW).expect("valid");
        assert_eq!(weekdays.fields(), ["*/15", "9-17", "*", "*", "MON-FRI"]);
        assert_eq!(weekdays.days_of_week(), Some(BTreeSet::from([1, 2, 3, 4, 5])));
        let sundays = CronSchedule::parse("0 0 * * 0,7", "UTC", NOW).expect("valid");
        assert_eq!(sundays.days_of_week(), Some(BTreeSet::from([0])));
        assert_eq!(CronSchedule::parse("0 0 * * *", "UTC", NOW).expect("valid").days_of_week(), None);
    }

    #[test]
    fn cron_rejections_name_the_rule() {
        let err = |e: &str, tz: &str| CronSchedule::parse(e, tz, NOW).expect_err("rejected");
        assert!(err("0 10 * *", "UTC").contains("5 fields"));
        assert!(err("61 10 * * *", "UTC").contains("minute"));
        assert!(err("0 10 1 * MON", "UTC").contains("both"));
        assert!(err("0 10 * * *", "Mars/Olympus").contains("time zone"));
        assert!(err("0 0 31 2 *", "UTC").contains("never"));
        assert!(err("0 10 L * *", "UTC").contains("day-of-month"));
        assert!(err("0 10 ? * *", "UTC").contains("not supported"));
    }
}
