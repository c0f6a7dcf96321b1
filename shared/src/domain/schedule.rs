//! When a task runs: now, at a time (a delay resolves to a time), or by cron
//! in a time zone. Also the translation of a 5-field cron into EventBridge
//! Scheduler's 6-field `cron(...)` and back (for the local bridge).

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
    /// Validates a cron expression and time zone; the error is the rule broken.
    pub fn parse(expression: &str, timezone: &str) -> Result<Self, String> {
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
        if s.next_after(super::now_millis()).is_none() {
            return Err("never fires".into());
        }
        Ok(s)
    }

    /// The first firing strictly after `after`.
    pub fn next_after(&self, after: EpochMillis) -> Option<EpochMillis> {
        let cron = croner::Cron::from_str(&self.expression).ok()?;
        let tz = jiff::tz::TimeZone::get(&self.timezone).ok()?;
        let start = jiff::Timestamp::from_millisecond(after).ok()?.to_zoned(tz);
        let next = cron.find_next_occurrence(&start, false).ok()?;
        Some(next.timestamp().as_millisecond())
    }

    /// The EventBridge Scheduler expression: `cron(min hour dom month dow year)`,
    /// day-of-week as names (Scheduler numbers days 1-7 from Sunday), and `?`
    /// in the unrestricted one of day-of-month and day-of-week.
    pub fn aws_expression(&self) -> String {
        let f: Vec<&str> = self.expression.split_whitespace().collect();
        let dow = expand(f[4], 0, 7, &DOW_NAMES).map(|d| normalise_dow(&d)).unwrap_or_default();
        let (dom, dow) = if dow.len() == 7 {
            (f[2].to_owned(), "?".to_owned())
        } else {
            ("?".to_owned(), dow.iter().map(|d| DOW_NAMES[*d as usize]).collect::<Vec<_>>().join(","))
        };
        format!("cron({} {} {} {} {} *)", f[0], f[1], dom, f[3], dow)
    }

    /// Reads back an expression written by [`Self::aws_expression`].
    pub fn from_aws(expression: &str, timezone: Option<&str>) -> Option<Self> {
        let inner = expression.strip_prefix("cron(")?.strip_suffix(')')?;
        let f: Vec<&str> = inner.split_whitespace().collect();
        if f.len() != 6 || f[5] != "*" {
            return None;
        }
        let q = |s: &str| if s == "?" { "*".to_owned() } else { s.to_owned() };
        Some(Self {
            expression: format!("{} {} {} {} {}", f[0], f[1], q(f[2]), f[3], q(f[4])),
            timezone: timezone.unwrap_or("UTC").to_owned(),
        })
    }
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
        let c = CronSchedule::parse("0 10 * * *", "Asia/Shanghai").expect("valid");
        // 10:00 in Shanghai is 02:00 UTC.
        assert_eq!(c.next_after(ms("2026-11-22T00:00:00Z")), Some(ms("2026-11-22T02:00:00Z")));
        assert_eq!(c.next_after(ms("2026-11-22T02:00:00Z")), Some(ms("2026-11-23T02:00:00Z")));
    }

    #[test]
    fn cron_translates_to_scheduler_syntax_and_back() {
        let daily = CronSchedule::parse("0 10 * * *", "UTC").expect("valid");
        assert_eq!(daily.aws_expression(), "cron(0 10 * * ? *)");
        let weekdays = CronSchedule::parse("*/15 9-17 * * 1-5", "Europe/Berlin").expect("valid");
        assert_eq!(weekdays.aws_expression(), "cron(*/15 9-17 ? * MON,TUE,WED,THU,FRI *)");
        let sundays = CronSchedule::parse("0 0 * * 0,7", "UTC").expect("valid");
        assert_eq!(sundays.aws_expression(), "cron(0 0 ? * SUN *)");
        let back = CronSchedule::from_aws(&weekdays.aws_expression(), Some("Europe/Berlin")).expect("parses");
        assert_eq!(back.next_after(ms("2026-11-23T00:00:00Z")), weekdays.next_after(ms("2026-11-23T00:00:00Z")));
    }

    #[test]
    fn cron_rejections_name_the_rule() {
        let err = |e: &str, tz: &str| CronSchedule::parse(e, tz).expect_err("rejected");
        assert!(err("0 10 * *", "UTC").contains("5 fields"));
        assert!(err("61 10 * * *", "UTC").contains("minute"));
        assert!(err("0 10 1 * MON", "UTC").contains("both"));
        assert!(err("0 10 * * *", "Mars/Olympus").contains("time zone"));
        assert!(err("0 0 31 2 *", "UTC").contains("never"));
        assert!(err("0 10 L * *", "UTC").contains("day-of-month"));
        assert!(err("0 10 ? * *", "UTC").contains("not supported"));
    }
}
