//! Six-field NCRONTAB schedules (`{second} {minute} {hour} {day} {month} {day-of-week}`, UTC), as
//! the Functions timer trigger reads them, evaluated with the `cron` crate.
//!
//! The one real difference between the two dialects is day-of-week numbering: NCRONTAB counts
//! 0 = Sunday .. 6 = Saturday (and accepts 7 as Sunday, like Vixie cron), while the `cron` crate
//! follows Quartz, 1 = Sunday .. 7 = Saturday. We parse the day-of-week field ourselves into a set
//! of days and hand the crate an explicit list of names, so the numbering can never be off by one.
//! Like NCRONTAB, the crate requires both the day-of-month and the day-of-week field to match.

use std::str::FromStr;

use chrono::{DateTime, Utc};

const DAY_NAMES: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

/// A parsed NCRONTAB schedule.
#[derive(Debug, Clone)]
pub struct Ncrontab {
    /// The expression as written (after `%SETTING%` resolution).
    pub text: String,
    schedule: cron::Schedule,
}

impl Ncrontab {
    /// Parses a six-field NCRONTAB expression. Errors are human-readable reasons.
    pub fn parse(text: &str) -> Result<Self, String> {
        let fields: Vec<&str> = text.split_whitespace().collect();
        if fields.len() != 6 {
            // Azure also accepts five-field expressions and TimeSpan strings on some plans; Saldo
            // uses neither, and refusing them keeps one meaning per schedule.
            return Err(format!(
                "schedule `{text}` must have six fields ({{second}} {{minute}} {{hour}} {{day}} {{month}} {{day-of-week}}), found {}",
                fields.len()
            ));
        }
        let dow = parse_day_of_week(fields[5]).map_err(|e| format!("schedule `{text}`: {e}"))?;
        let expr = format!(
            "{} {} {} {} {} {}",
            fields[0], fields[1], fields[2], fields[3], fields[4], dow
        );
        let schedule =
            cron::Schedule::from_str(&expr).map_err(|e| format!("schedule `{text}`: {e}"))?;
        Ok(Self {
            text: text.to_string(),
            schedule,
        })
    }

    /// The first occurrence strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.schedule.after(&t).next()
    }
}

/// Turns an NCRONTAB day-of-week field into a `cron`-crate field of day names (`*` stays `*`).
fn parse_day_of_week(field: &str) -> Result<String, String> {
    if field == "*" || field == "?" {
        return Ok("*".to_string());
    }
    let mut days = [false; 7];
    for part in field.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => {
                let s: usize = s
                    .parse()
                    .map_err(|_| format!("bad step in day-of-week `{part}`"))?;
                if s == 0 {
                    return Err(format!("zero step in day-of-week `{part}`"));
                }
                (r, s)
            }
            None => (part, 1),
        };
        let (lo, hi) = if range == "*" {
            (0, 6)
        } else if let Some((a, b)) = range.split_once('-') {
            (day(a)?, day(b)?)
        } else {
            let d = day(range)?;
            // `5/2` means "from Friday, every second day" in cron dialects.
            (d, if part.contains('/') { 6 } else { d })
        };
        if lo > hi {
            return Err(format!("day-of-week range `{range}` runs backwards"));
        }
        for d in (lo..=hi).step_by(step) {
            days[d % 7] = true;
        }
    }
    let names: Vec<&str> = (0..7).filter(|&d| days[d]).map(|d| DAY_NAMES[d]).collect();
    Ok(names.join(","))
}

/// One NCRONTAB day: 0..=7 (0 and 7 are Sunday) or a three-letter name.
fn day(s: &str) -> Result<usize, String> {
    if let Ok(n) = s.parse::<usize>() {
        return if n <= 7 {
            Ok(n)
        } else {
            Err(format!("day-of-week `{s}` is out of range 0-7"))
        };
    }
    DAY_NAMES
        .iter()
        .position(|n| n.eq_ignore_ascii_case(s))
        .ok_or_else(|| format!("unknown day-of-week `{s}`"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Datelike, TimeZone, Weekday};

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn every_five_seconds() {
        let s = Ncrontab::parse("*/5 * * * * *").unwrap();
        assert_eq!(
            s.next_after(t("2026-01-01T00:00:01Z")).unwrap(),
            t("2026-01-01T00:00:05Z")
        );
    }

    #[test]
    fn day_of_week_zero_is_sunday() {
        // 2026-11-23 is a Monday.
        let start = Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0).unwrap();
        let sunday = Ncrontab::parse("0 0 9 * * 0")
            .unwrap()
            .next_after(start)
            .unwrap();
        assert_eq!(sunday.weekday(), Weekday::Sun);
        let seven = Ncrontab::parse("0 0 9 * * 7")
            .unwrap()
            .next_after(start)
            .unwrap();
        assert_eq!(seven, sunday);
        let weekdays = Ncrontab::parse("0 0 9 * * 1-5").unwrap();
        let sat = Utc.with_ymd_and_hms(2026, 11, 28, 0, 0, 0).unwrap();
        assert_eq!(weekdays.next_after(sat).unwrap().weekday(), Weekday::Mon);
        let named = Ncrontab::parse("0 30 9 * * Sat")
            .unwrap()
            .next_after(start)
            .unwrap();
        assert_eq!(named.weekday(), Weekday::Sat);
    }

    #[test]
    fn bad_schedules_are_refused() {
        for s in [
            "* * * * *",
            "0 0 0 * * 8",
            "0 0 0 * * Funday",
            "x * * * * *",
            "0 0 0 * * 5-1",
        ] {
            assert!(Ncrontab::parse(s).is_err(), "{s} should be refused");
        }
    }
}
