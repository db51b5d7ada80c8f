//! Cron schedules with time zones, as workflow triggers declare them. Shared by workflow-service
//! (validation) and agent-service (firing and previews).

use std::str::FromStr;

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

/// Parses a cron expression of 5 fields (minute hour day month weekday) or 6 (seconds first).
pub fn parse_cron(expression: &str) -> Result<Cron, String> {
    let fields = expression.split_whitespace().count();
    if !(5..=6).contains(&fields) {
        return Err(format!("a cron expression has 5 or 6 fields, not {fields}"));
    }
    CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .build()
        .parse(expression)
        .map_err(|e| format!("invalid cron expression: {e}"))
}

/// Parses an IANA time zone; empty means UTC.
pub fn parse_timezone(name: &str) -> Result<Tz, String> {
    if name.is_empty() {
        return Ok(Tz::UTC);
    }
    Tz::from_str(name).map_err(|_| format!("unknown time zone {name:?} (use an IANA name such as \"Europe/Paris\")"))
}

/// A parsed schedule: when a scheduled trigger fires.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: Cron,
    timezone: Tz,
}

impl Schedule {
    pub fn parse(expression: &str, timezone: &str) -> Result<Self, String> {
        Ok(Self { cron: parse_cron(expression)?, timezone: parse_timezone(timezone)? })
    }

    /// The first fire time strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = self.timezone.from_utc_datetime(&after.naive_utc());
        self.cron.find_next_occurrence(&local, false).ok().map(|t| t.with_timezone(&Utc))
    }

    /// The last fire time at or before `at`: the tick a scheduler that looks at `at` is due to
    /// run (and the only one it runs after downtime, however many it missed).
    pub fn previous_at_or_before(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = self.timezone.from_utc_datetime(&at.naive_utc());
        self.cron.find_previous_occurrence(&local, true).ok().map(|t| t.with_timezone(&Utc))
    }

    /// The next `n` fire times after `after`.
    pub fn upcoming(&self, after: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        let mut out = Vec::with_capacity(n);
        let mut cursor = after;
        while out.len() < n {
            match self.next_after(cursor) {
                Some(t) => {
                    out.push(t);
                    cursor = t;
                }
                None => break,
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weekly_in_a_time_zone() {
        let s = Schedule::parse("0 9 * * MON", "America/New_York").unwrap();
        let after = Utc.with_ymd_and_hms(2026, 11, 26, 0, 0, 0).unwrap(); // a Thursday
        let next = s.upcoming(after, 2);
        assert_eq!(next[0], Utc.with_ymd_and_hms(2026, 11, 30, 14, 0, 0).unwrap());
        assert_eq!(next[1], Utc.with_ymd_and_hms(2026, 12, 7, 14, 0, 0).unwrap());
    }

    #[test]
    fn the_latest_tick_at_or_before_a_time() {
        let s = Schedule::parse("0 9 * * MON", "America/New_York").unwrap();
        let thursday = Utc.with_ymd_and_hms(2026, 11, 26, 0, 0, 0).unwrap();
        assert_eq!(s.previous_at_or_before(thursday), Some(Utc.with_ymd_and_hms(2026, 11, 23, 14, 0, 0).unwrap()));
        let tick = Utc.with_ymd_and_hms(2026, 11, 30, 14, 0, 0).unwrap();
        assert_eq!(s.previous_at_or_before(tick), Some(tick), "a tick is at or before itself");
        let every_two = Schedule::parse("*/2 * * * * *", "").unwrap();
        let odd = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 3).unwrap() + chrono::Duration::milliseconds(400);
        assert_eq!(every_two.previous_at_or_before(odd), Some(Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 2).unwrap()));
    }

    #[test]
    fn bad_expressions_are_refused() {
        assert!(parse_cron("61 * * * *").is_err());
        assert!(parse_cron("* * *").is_err());
        assert!(parse_cron("*/5 * * * * *").is_ok());
        assert!(parse_timezone("Mars/Olympus").is_err());
    }
}
