//! [`Timestamp`]: an instant in UTC, to the nanosecond. Its serde form is the RFC 3339 text
//! chrono writes for a `DateTime<Utc>` (`2026-11-24T10:00:00Z`, `2026-11-24T10:00:00.250Z`), so
//! features and models stored as JSON read back whichever of the two wrote them; any RFC 3339
//! offset is read and brought to UTC.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

const NANOS_PER_SECOND: u32 = 1_000_000_000;
const SECONDS_PER_DAY: i64 = 86_400;
/// 0000-01-01T00:00:00Z and 9999-12-31T23:59:59Z: the years RFC 3339 can write.
const MIN_SECONDS: i64 = -62_167_219_200;
const MAX_SECONDS: i64 = 253_402_300_799;

/// An instant in UTC: whole seconds since the Unix epoch and the nanoseconds past them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp {
    seconds: i64,
    nanos: u32,
}

impl Timestamp {
    pub const UNIX_EPOCH: Timestamp = Timestamp { seconds: 0, nanos: 0 };

    /// The instant `seconds` (and `nanos` more) after the Unix epoch; `None` outside the years
    /// 0 to 9999 or for `nanos` of a second or more.
    pub fn new(seconds: i64, nanos: u32) -> Option<Self> {
        ((MIN_SECONDS..=MAX_SECONDS).contains(&seconds) && nanos < NANOS_PER_SECOND).then_some(Self { seconds, nanos })
    }

    /// The instant `seconds` after the Unix epoch, held within the years 0 to 9999.
    pub fn from_unix_seconds(seconds: i64) -> Self {
        Self { seconds: seconds.clamp(MIN_SECONDS, MAX_SECONDS), nanos: 0 }
    }

    /// The system clock's time.
    pub fn now() -> Self {
        let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        Self::new(since_epoch.as_secs() as i64, since_epoch.subsec_nanos()).unwrap_or_default()
    }

    /// Whole seconds since the Unix epoch, rounded down.
    pub fn unix_seconds(self) -> i64 {
        self.seconds
    }

    /// Nanoseconds past [`Timestamp::unix_seconds`].
    pub fn subsec_nanos(self) -> u32 {
        self.nanos
    }

    /// `seconds` later (earlier when negative), held within the years 0 to 9999.
    pub fn plus_seconds(self, seconds: i64) -> Self {
        let moved = self.seconds.saturating_add(seconds);
        if moved > MAX_SECONDS {
            Self { seconds: MAX_SECONDS, nanos: NANOS_PER_SECOND - 1 }
        } else {
            Self { seconds: moved.max(MIN_SECONDS), nanos: self.nanos }
        }
    }

    /// Whole seconds from `earlier` to `self`, rounded toward zero (negative when `earlier` is later).
    pub fn seconds_since(self, earlier: Timestamp) -> i64 {
        let mut seconds = self.seconds - earlier.seconds;
        let mut nanos = i64::from(self.nanos) - i64::from(earlier.nanos);
        if nanos < 0 {
            seconds -= 1;
            nanos += i64::from(NANOS_PER_SECOND);
        }
        if seconds < 0 && nanos > 0 { seconds + 1 } else { seconds }
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_from_march = i64::from((month + 9) % 12);
    let day_of_year = (153 * month_from_march + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The proleptic Gregorian date of a day since 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let days = days + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days - era * 146_097;
    let year_of_era = (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_from_march + 2) / 5 + 1) as u32;
    let month = if month_from_march < 10 { month_from_march + 3 } else { month_from_march - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// RFC 3339 in UTC, the fraction in as few of 0, 3, 6 or 9 digits as hold it exactly.
impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (year, month, day) = civil_from_days(self.seconds.div_euclid(SECONDS_PER_DAY));
        let second_of_day = self.seconds.rem_euclid(SECONDS_PER_DAY);
        let (hour, minute, second) = (second_of_day / 3_600, second_of_day / 60 % 60, second_of_day % 60);
        write!(f, "{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}")?;
        match self.nanos {
            0 => {}
            nanos if nanos % 1_000_000 == 0 => write!(f, ".{:03}", nanos / 1_000_000)?,
            nanos if nanos % 1_000 == 0 => write!(f, ".{:06}", nanos / 1_000)?,
            nanos => write!(f, ".{nanos:09}")?,
        }
        f.write_str("Z")
    }
}

/// Why a text is not an RFC 3339 time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimestampError(&'static str);

impl fmt::Display for TimestampError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "not an RFC 3339 time: {}", self.0)
    }
}

impl std::error::Error for TimestampError {}

/// Reads the digits of `text[at..at + len]` as a number.
fn digits(text: &[u8], at: usize, len: usize) -> Result<u32, TimestampError> {
    let field = text.get(at..at + len).ok_or(TimestampError("too short"))?;
    field.iter().try_fold(0u32, |n, &b| {
        if b.is_ascii_digit() { Ok(n * 10 + u32::from(b - b'0')) } else { Err(TimestampError("a digit is missing")) }
    })
}

fn expect(text: &[u8], at: usize, allowed: &[u8], what: &'static str) -> Result<(), TimestampError> {
    match text.get(at) {
        Some(b) if allowed.contains(b) => Ok(()),
        _ => Err(TimestampError(what)),
    }
}

impl std::str::FromStr for Timestamp {
    type Err = TimestampError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bytes = text.as_bytes();
        let year = i64::from(digits(bytes, 0, 4)?);
        expect(bytes, 4, b"-", "no '-' after the year")?;
        let month = digits(bytes, 5, 2)?;
        expect(bytes, 7, b"-", "no '-' after the month")?;
        let day = digits(bytes, 8, 2)?;
        expect(bytes, 10, b"Tt ", "no 'T' after the date")?;
        let hour = digits(bytes, 11, 2)?;
        expect(bytes, 13, b":", "no ':' after the hour")?;
        let minute = digits(bytes, 14, 2)?;
        expect(bytes, 16, b":", "no ':' after the minute")?;
        let second = digits(bytes, 17, 2)?;
        if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
            return Err(TimestampError("no such date"));
        }
        if hour > 23 || minute > 59 || second > 59 {
            return Err(TimestampError("no such time of day"));
        }
        let mut at = 19;
        let mut nanos = 0u32;
        if bytes.get(at) == Some(&b'.') {
            at += 1;
            let start = at;
            while bytes.get(at).is_some_and(u8::is_ascii_digit) {
                // Digits past the nanosecond are dropped, as chrono does.
                if at - start < 9 {
                    nanos = nanos * 10 + u32::from(bytes[at] - b'0');
                }
                at += 1;
            }
            if at == start {
                return Err(TimestampError("no digit after '.'"));
            }
            nanos *= 10u32.pow(9u32.saturating_sub((at - start) as u32));
        }
        let offset = match bytes.get(at) {
            Some(b'Z' | b'z') if at + 1 == bytes.len() => 0,
            Some(&sign @ (b'+' | b'-')) if at + 6 == bytes.len() => {
                expect(bytes, at + 3, b":", "no ':' in the offset")?;
                let (hours, minutes) = (digits(bytes, at + 1, 2)?, digits(bytes, at + 4, 2)?);
                if hours > 23 || minutes > 59 {
                    return Err(TimestampError("no such offset"));
                }
                let offset = i64::from(hours * 3_600 + minutes * 60);
                if sign == b'-' { -offset } else { offset }
            }
            _ => return Err(TimestampError("no offset ('Z' or '+hh:mm') at the end")),
        };
        let seconds = days_from_civil(year, month, day) * SECONDS_PER_DAY
            + i64::from(hour * 3_600 + minute * 60 + second)
            - offset;
        Timestamp::new(seconds, nanos).ok_or(TimestampError("outside the years 0 to 9999 in UTC"))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Rfc3339;
        impl serde::de::Visitor<'_> for Rfc3339 {
            type Value = Timestamp;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an RFC 3339 time")
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Timestamp, E> {
                text.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_str(Rfc3339)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, Utc};

    fn chrono_of(t: Timestamp) -> DateTime<Utc> {
        DateTime::from_timestamp(t.unix_seconds(), t.subsec_nanos()).unwrap()
    }

    fn samples() -> Vec<Timestamp> {
        let mut samples = vec![
            Timestamp::new(MIN_SECONDS, 0).unwrap(),
            Timestamp::new(MAX_SECONDS, 999_999_999).unwrap(),
            Timestamp::UNIX_EPOCH,
            Timestamp::new(-1, 1).unwrap(),
            Timestamp::new(951_782_400, 0).unwrap(),
            Timestamp::new(1_700_000_000, 250_000_000).unwrap(),
            Timestamp::new(1_700_000_000, 250_000).unwrap(),
            Timestamp::new(1_700_000_000, 7).unwrap(),
        ];
        let mut seconds = MIN_SECONDS;
        while seconds < MAX_SECONDS {
            samples.push(Timestamp::new(seconds, (seconds.unsigned_abs() % 1_000_000_000) as u32).unwrap());
            seconds += 7_777_777;
        }
        samples
    }

    #[test]
    fn the_text_is_chronos_and_reads_back() {
        for t in samples() {
            let json = serde_json::to_string(&t).unwrap();
            assert_eq!(json, serde_json::to_string(&chrono_of(t)).unwrap(), "{t:?}");
            assert_eq!(serde_json::from_str::<Timestamp>(&json).unwrap(), t);
            let by_chrono: DateTime<Utc> = serde_json::from_str(&json).unwrap();
            assert_eq!(by_chrono, chrono_of(t));
        }
    }

    #[test]
    fn offsets_and_long_fractions_read_as_chrono_reads_them() {
        for text in [
            "2026-11-24T10:00:00+05:30",
            "2026-11-24t10:00:00.123456789123-08:00",
            "2024-02-29 23:59:59.5z",
            "0000-01-01T00:00:00Z",
        ] {
            let ours: Timestamp = text.parse().unwrap();
            let theirs = DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc);
            assert_eq!(chrono_of(ours), theirs, "{text}");
        }
        for text in ["2026-02-29T10:00:00Z", "2026-11-24T24:00:00Z", "2026-11-24T10:00:00", "2026-11-24T10:00:00.Z", ""]
        {
            assert!(text.parse::<Timestamp>().is_err(), "{text}");
        }
    }

    #[test]
    fn whole_seconds_between_round_toward_zero_as_chrono_counts_them() {
        for (a, b) in [((10, 100), (5, 900)), ((5, 900), (10, 100)), ((3, 0), (3, 5)), ((-2, 5), (1, 0))] {
            let (a, b) = (Timestamp::new(a.0, a.1).unwrap(), Timestamp::new(b.0, b.1).unwrap());
            assert_eq!(a.seconds_since(b), (chrono_of(a) - chrono_of(b)).num_seconds(), "{a:?} since {b:?}");
        }
        assert_eq!(Timestamp::from_unix_seconds(i64::MAX).plus_seconds(1).unix_seconds(), MAX_SECONDS);
    }
}
