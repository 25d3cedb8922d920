//! Which agents may take a lead beyond room and presence: the skill a lead's channel or source
//! needs (the organisation's skill routes), and each agent's working hours. An agent's time
//! zone is a fixed UTC offset (`+02:00`) or a named IANA zone (`Europe/Berlin`, daylight saving
//! time included) read from the system's tz database (`/usr/share/zoneinfo`, the `tzdata`
//! package, or `TZDIR`); a name the database lacks is refused rather than guessed.

use crate::error::AssignmentError;
use chrono::{DateTime, Datelike, Timelike, Utc};
use leads_proto::v1 as pb;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

pub const MAX_SKILLS: usize = 20;
pub const MAX_SKILL_CHARS: usize = 32;
pub const MAX_SKILL_ROUTES: usize = 50;
pub const MAX_MATCH_CHARS: usize = 100;
/// UTC-18:00 .. UTC+18:00, as ISO 8601 allows.
pub const MAX_OFFSET_MINUTES: i32 = 18 * 60;
const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

fn is_skill_name(name: &str) -> bool {
    (1..=MAX_SKILL_CHARS).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// The agent's skills, sorted and each once.
pub fn parse_skills(names: &[String]) -> Result<Vec<String>, AssignmentError> {
    if names.len() > MAX_SKILLS {
        return Err(AssignmentError::invalid("skills", format!("at most {MAX_SKILLS}")));
    }
    if let Some(bad) = names.iter().find(|n| !is_skill_name(n)) {
        return Err(AssignmentError::invalid(
            "skills",
            format!("{bad:?} must be 1-{MAX_SKILL_CHARS} of a-z, 0-9, _ and -"),
        ));
    }
    let mut skills = names.to_vec();
    skills.sort();
    skills.dedup();
    Ok(skills)
}

/// An agent's time zone as set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentZone {
    Utc,
    /// Minutes east of UTC.
    Fixed(i32),
    /// An IANA name the system's tz database has.
    Named(String),
}

impl AgentZone {
    /// From the `utc_offset_minutes` and `time_zone` columns.
    pub fn from_columns(offset_minutes: Option<i32>, name: Option<&str>) -> Self {
        match (name, offset_minutes) {
            (Some(name), _) => AgentZone::Named(name.to_owned()),
            (None, Some(minutes)) => AgentZone::Fixed(minutes),
            (None, None) => AgentZone::Utc,
        }
    }

    pub fn offset_column(&self) -> Option<i32> {
        match self {
            AgentZone::Fixed(minutes) => Some(*minutes),
            _ => None,
        }
    }

    pub fn name_column(&self) -> Option<&str> {
        match self {
            AgentZone::Named(name) => Some(name),
            _ => None,
        }
    }

    /// Minutes east of UTC at `now`. A named zone that can no longer be read (its database
    /// removed since it was set) counts as UTC, and says so.
    pub fn offset_minutes_at(&self, now: DateTime<Utc>) -> i32 {
        match self {
            AgentZone::Utc => 0,
            AgentZone::Fixed(minutes) => *minutes,
            AgentZone::Named(name) => match named_zone(name) {
                Some(zone) => zone.find_local_time_type(now.timestamp()).map_or(0, |t| t.ut_offset() / 60),
                None => {
                    tracing::warn!(time_zone = %name, "time zone missing from the tz database, counting it as UTC");
                    0
                }
            },
        }
    }

    pub fn format(&self) -> String {
        match self {
            AgentZone::Utc => String::new(),
            AgentZone::Fixed(m) => {
                let sign = if *m < 0 { '-' } else { '+' };
                format!("{sign}{}", format_clock(m.abs()))
            }
            AgentZone::Named(name) => name.clone(),
        }
    }
}

/// Where the system keeps its tz database.
fn zoneinfo_dir() -> std::path::PathBuf {
    std::env::var_os("TZDIR").map_or_else(|| "/usr/share/zoneinfo".into(), Into::into)
}

/// Looks like an IANA name (`Area/Location`, `UTC`): no path tricks reach the file system.
fn is_zone_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.split('/').all(|part| {
            !part.is_empty()
                && !part.starts_with('.')
                && part.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'+'))
        })
}

/// Each zone read once per process (a miss too), as the dispatcher weighs every agent's hours
/// on every reservation.
fn named_zone(name: &str) -> Option<Arc<tz::TimeZone>> {
    static ZONES: OnceLock<Mutex<HashMap<String, Option<Arc<tz::TimeZone>>>>> = OnceLock::new();
    let zones = ZONES.get_or_init(Default::default);
    if let Some(known) = zones.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(name) {
        return known.clone();
    }
    let read = is_zone_name(name)
        .then(|| std::fs::read(zoneinfo_dir().join(name)).ok())
        .flatten()
        .and_then(|bytes| tz::TimeZone::from_tz_data(&bytes).ok())
        .map(Arc::new);
    zones.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(name.to_owned(), read.clone());
    read
}

/// `+HH:MM` / `-HH:MM`, or an IANA name such as `Europe/Berlin`; empty is UTC.
pub fn parse_time_zone(value: &str) -> Result<AgentZone, AssignmentError> {
    let value = value.trim();
    if value.is_empty() {
        return Ok(AgentZone::Utc);
    }
    let (sign, rest) = match value.as_bytes().first() {
        Some(b'+') => (1, &value[1..]),
        Some(b'-') => (-1, &value[1..]),
        _ => {
            return match named_zone(value) {
                Some(_) => Ok(AgentZone::Named(value.to_owned())),
                None => Err(AssignmentError::invalid(
                    "time_zone",
                    format!("{value:?} is not a known IANA time zone (such as Europe/Berlin) or a UTC offset (+02:00)"),
                )),
            };
        }
    };
    let refused =
        || AssignmentError::invalid("time_zone", "must be a UTC offset such as +02:00 or -05:30, or an IANA zone name");
    let minutes = clock_minutes(rest).ok_or_else(refused)?;
    if minutes > MAX_OFFSET_MINUTES {
        return Err(refused());
    }
    Ok(AgentZone::Fixed(sign * minutes))
}

/// `HH:MM` to minutes since midnight, up to `24:00`.
fn clock_minutes(value: &str) -> Option<i32> {
    let (h, m) = value.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (i32, i32) = (h.parse().ok()?, m.parse().ok()?);
    let minutes = h * 60 + m;
    (m < 60 && minutes <= 24 * 60).then_some(minutes)
}

fn format_clock(minutes: i32) -> String {
    format!("{:02}:{:02}", minutes / 60, minutes % 60)
}

/// One daily window on some weekdays, in the agent's local time. A window may cross midnight
/// (`22:00`-`06:00`): its weekday is the day it starts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkingHours {
    /// ISO weekdays as bits, Monday = bit 0.
    pub days: i16,
    /// Minutes since local midnight; after `end` when the window crosses midnight.
    pub start: i32,
    pub end: i32,
}

impl WorkingHours {
    /// `None` clears them (no days): the agent is always working.
    pub fn parse(hours: &pb::WorkingHours) -> Result<Option<Self>, AssignmentError> {
        if hours.days.is_empty() {
            return Ok(None);
        }
        let mut days = 0i16;
        for day in &hours.days {
            let index = DAYS.iter().position(|d| d == &day.trim().to_ascii_lowercase()).ok_or_else(|| {
                AssignmentError::invalid("working_hours.days", format!("{day:?} is not one of mon, tue, ... sun"))
            })?;
            days |= 1 << index;
        }
        let clock = |field: &str, value: &str| {
            clock_minutes(value.trim())
                .ok_or_else(|| AssignmentError::invalid(field, "must be a time of day as HH:MM (00:00-24:00)"))
        };
        let (start, end) = (clock("working_hours.start", &hours.start)?, clock("working_hours.end", &hours.end)?);
        // 24:00 ends a day; a window starting then is the next day's 00:00.
        if start == end || start == 24 * 60 {
            return Err(AssignmentError::invalid(
                "working_hours.end",
                "must differ from start (which is before 24:00)",
            ));
        }
        Ok(Some(Self { days, start, end }))
    }

    pub fn from_columns(days: Option<i16>, start: Option<i32>, end: Option<i32>) -> Option<Self> {
        Some(Self { days: days?, start: start?, end: end? })
    }

    pub fn to_proto(self) -> pb::WorkingHours {
        pb::WorkingHours {
            days: DAYS
                .iter()
                .enumerate()
                .filter(|(i, _)| self.days & (1 << i) != 0)
                .map(|(_, d)| (*d).into())
                .collect(),
            start: format_clock(self.start),
            end: format_clock(self.end),
        }
    }

    /// Whether `now` falls in the window, in the local time `offset_minutes` east of UTC.
    pub fn contains(self, offset_minutes: i32, now: DateTime<Utc>) -> bool {
        let local = now + chrono::Duration::minutes(i64::from(offset_minutes));
        let day = local.weekday().num_days_from_monday();
        let minute = i32::try_from(local.hour() * 60 + local.minute()).unwrap_or(0);
        let works_on = |day: u32| self.days & (1 << day) != 0;
        if self.start < self.end {
            return works_on(day) && (self.start..self.end).contains(&minute);
        }
        // Overnight: the evening of a working day, or the morning after one.
        (works_on(day) && minute >= self.start) || (works_on((day + 6) % 7) && minute < self.end)
    }
}

/// A lead whose channel or source equals `match` needs `skill`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkillRoute {
    #[serde(rename = "match")]
    pub matches: String,
    pub skill: String,
}

/// The organisation's routes as sent, each match once.
pub fn parse_routes(routes: &[pb::SkillRoute]) -> Result<Vec<SkillRoute>, AssignmentError> {
    if routes.len() > MAX_SKILL_ROUTES {
        return Err(AssignmentError::invalid("skill_routes", format!("at most {MAX_SKILL_ROUTES}")));
    }
    let mut parsed: Vec<SkillRoute> = Vec::with_capacity(routes.len());
    for route in routes {
        let matches = route.r#match.trim().to_owned();
        let well_formed = (1..=MAX_MATCH_CHARS).contains(&matches.len())
            && !matches.chars().any(|c| c.is_whitespace() || c.is_control());
        if !well_formed {
            return Err(AssignmentError::invalid(
                "skill_routes.match",
                format!("must be a channel or source of 1-{MAX_MATCH_CHARS} characters without spaces"),
            ));
        }
        if parsed.iter().any(|p| p.matches == matches) {
            return Err(AssignmentError::invalid("skill_routes.match", format!("{matches:?} is given twice")));
        }
        let skill = route.skill.trim().to_owned();
        if !is_skill_name(&skill) {
            return Err(AssignmentError::invalid(
                "skill_routes.skill",
                format!("{skill:?} must be 1-{MAX_SKILL_CHARS} of a-z, 0-9, _ and -"),
            ));
        }
        parsed.push(SkillRoute { matches, skill });
    }
    Ok(parsed)
}

/// The skill a lead from `channel` / `source` needs under `routes`: the first that matches.
pub fn needed_skill<'r>(routes: &'r [SkillRoute], channel: Option<&str>, source: Option<&str>) -> Option<&'r str> {
    routes
        .iter()
        .find(|r| Some(r.matches.as_str()) == channel || Some(r.matches.as_str()) == source)
        .map(|r| r.skill.as_str())
}

/// The routes in words for the settings' change record.
pub fn describe_routes(routes: &[SkillRoute]) -> String {
    if routes.is_empty() {
        return "none".into();
    }
    routes.iter().map(|r| format!("{} => {}", r.matches, r.skill)).collect::<Vec<_>>().join(", ")
}

/// Why a waiting lead waits, for ListWaitingLeads.
pub fn needs_skill_words(skill: &str) -> String {
    format!("needs skill {skill}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn field<T: std::fmt::Debug>(result: Result<T, AssignmentError>) -> String {
        match result {
            Err(AssignmentError::InvalidArgument { field, .. }) => field,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn skills_are_short_lowercase_names_at_most_twenty() {
        let names = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(parse_skills(&names(&["whatsapp", "es", "whatsapp"])).unwrap(), names(&["es", "whatsapp"]));
        assert_eq!(field(parse_skills(&names(&["WhatsApp"]))), "skills");
        assert_eq!(field(parse_skills(&names(&[""]))), "skills");
        assert_eq!(field(parse_skills(&vec!["a".to_owned(); 21])), "skills");
    }

    #[test]
    fn time_zones_are_fixed_offsets_or_iana_names() {
        assert_eq!(parse_time_zone("+02:00").unwrap(), AgentZone::Fixed(120));
        assert_eq!(parse_time_zone("-05:30").unwrap(), AgentZone::Fixed(-330));
        assert_eq!(parse_time_zone("").unwrap(), AgentZone::Utc);
        assert_eq!(AgentZone::Fixed(-330).format(), "-05:30");
        for bad in ["Europe/Atlantis", "2:00", "+19:00", "+02:60", "../etc/passwd", "/etc/localtime", "Europe/../UTC"] {
            assert_eq!(field(parse_time_zone(bad)), "time_zone", "{bad}");
        }
        // Needs the system's tz database (the `tzdata` package).
        let berlin = parse_time_zone("Europe/Berlin").expect("tzdata installed");
        assert_eq!(berlin, AgentZone::Named("Europe/Berlin".into()));
        let winter = Utc.with_ymd_and_hms(2026, 1, 15, 12, 0, 0).unwrap();
        let summer = Utc.with_ymd_and_hms(2026, 7, 15, 12, 0, 0).unwrap();
        assert_eq!(berlin.offset_minutes_at(winter), 60);
        assert_eq!(berlin.offset_minutes_at(summer), 120, "daylight saving time");
        // The night of 2026-03-29 at 01:00 UTC Berlin goes from +01:00 to +02:00.
        assert_eq!(berlin.offset_minutes_at(Utc.with_ymd_and_hms(2026, 3, 29, 0, 59, 0).unwrap()), 60);
        assert_eq!(berlin.offset_minutes_at(Utc.with_ymd_and_hms(2026, 3, 29, 1, 0, 0).unwrap()), 120);
    }

    #[test]
    fn an_overnight_window_belongs_to_the_day_it_starts() {
        let fridays = WorkingHours::parse(&pb::WorkingHours {
            days: vec!["fri".into()],
            start: "22:00".into(),
            end: "06:00".into(),
        })
        .unwrap()
        .expect("set");
        // Friday 2026-12-11 and the Saturday morning after it, then Friday morning.
        let at = |d, h, m| Utc.with_ymd_and_hms(2026, 12, d, h, m, 0).unwrap();
        assert!(fridays.contains(0, at(11, 22, 0)));
        assert!(fridays.contains(0, at(11, 23, 59)));
        assert!(fridays.contains(0, at(12, 5, 59)), "saturday morning continues friday's night");
        assert!(!fridays.contains(0, at(12, 6, 0)));
        assert!(!fridays.contains(0, at(11, 5, 0)), "friday morning continues thursday's night");
        assert!(!fridays.contains(0, at(12, 22, 30)), "saturday evening is not a working day");
        assert!(!fridays.contains(0, at(11, 21, 59)));
    }

    #[test]
    fn working_hours_hold_on_their_days_in_the_agents_time() {
        let hours = |days: &[&str], start: &str, end: &str| pb::WorkingHours {
            days: days.iter().map(|d| (*d).into()).collect(),
            start: start.into(),
            end: end.into(),
        };
        let weekdays =
            WorkingHours::parse(&hours(&["mon", "tue", "wed", "thu", "fri"], "09:00", "17:00")).unwrap().expect("set");
        assert_eq!(weekdays.to_proto().days.len(), 5);
        // Monday 2026-12-07 07:30 UTC: 09:30 at +02:00, 07:30 in UTC.
        let monday = Utc.with_ymd_and_hms(2026, 12, 7, 7, 30, 0).unwrap();
        assert!(weekdays.contains(120, monday));
        assert!(!weekdays.contains(0, monday));
        // Sunday 23:30 UTC is Monday 01:30 at +02:00: a workday, before the window.
        let sunday = Utc.with_ymd_and_hms(2026, 12, 6, 23, 30, 0).unwrap();
        assert!(!weekdays.contains(120, sunday));
        assert_eq!(WorkingHours::parse(&hours(&[], "", "")).unwrap(), None);
        assert_eq!(field(WorkingHours::parse(&hours(&["monday"], "09:00", "17:00"))), "working_hours.days");
        assert_eq!(field(WorkingHours::parse(&hours(&["mon"], "9", "17:00"))), "working_hours.start");
        assert_eq!(field(WorkingHours::parse(&hours(&["mon"], "09:00", "09:00"))), "working_hours.end");
        assert_eq!(field(WorkingHours::parse(&hours(&["mon"], "24:00", "09:00"))), "working_hours.end");
        assert!(WorkingHours::parse(&hours(&["mon"], "17:00", "09:00")).unwrap().is_some(), "overnight");
    }

    #[test]
    fn routes_match_a_channel_or_a_source_first_match_wins() {
        let route = |m: &str, s: &str| pb::SkillRoute { r#match: m.into(), skill: s.into() };
        let routes = parse_routes(&[route("whatsapp", "whatsapp"), route("integration:shop", "sales")]).expect("valid");
        assert_eq!(needed_skill(&routes, Some("whatsapp"), Some("integration:shop")), Some("whatsapp"));
        assert_eq!(needed_skill(&routes, Some("instagram"), Some("integration:shop")), Some("sales"));
        assert_eq!(needed_skill(&routes, Some("instagram"), Some("chat_message")), None);
        assert_eq!(describe_routes(&routes), "whatsapp => whatsapp, integration:shop => sales");
        assert_eq!(field(parse_routes(&[route("a b", "x")])), "skill_routes.match");
        assert_eq!(field(parse_routes(&[route("x", "x"), route("x", "y")])), "skill_routes.match");
        assert_eq!(field(parse_routes(&[route("x", "Bad Skill")])), "skill_routes.skill");
        assert_eq!(field(parse_routes(&vec![route("x", "y"); 51])), "skill_routes");
    }
}
