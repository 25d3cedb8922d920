//! Which agents may take a lead beyond room and presence: the skill a lead's channel or source
//! needs (the organisation's skill routes), and each agent's working hours. Time zones are
//! fixed UTC offsets (`+02:00`): the workspace carries no tz database, so a named zone such as
//! `Europe/Paris` is refused rather than guessed.

use crate::error::AssignmentError;
use chrono::{DateTime, Datelike, Timelike, Utc};
use leads_proto::v1 as pb;
use serde::{Deserialize, Serialize};

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

/// `+HH:MM` / `-HH:MM` to minutes east of UTC; empty is UTC (`None`).
pub fn parse_time_zone(value: &str) -> Result<Option<i32>, AssignmentError> {
    let value = value.trim();
    if value.is_empty() {
        return Ok(None);
    }
    let refused = || {
        AssignmentError::invalid(
            "time_zone",
            "must be a UTC offset such as +02:00 or -05:30 (named zones are not supported)",
        )
    };
    let (sign, rest) = match value.as_bytes().first() {
        Some(b'+') => (1, &value[1..]),
        Some(b'-') => (-1, &value[1..]),
        _ => return Err(refused()),
    };
    let minutes = clock_minutes(rest).ok_or_else(refused)?;
    if minutes > MAX_OFFSET_MINUTES {
        return Err(refused());
    }
    Ok(Some(sign * minutes))
}

pub fn format_time_zone(offset_minutes: Option<i32>) -> String {
    offset_minutes.map_or_else(String::new, |m| {
        let sign = if m < 0 { '-' } else { '+' };
        format!("{sign}{}", format_clock(m.abs()))
    })
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

/// One daily window on some weekdays, in the agent's local time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkingHours {
    /// ISO weekdays as bits, Monday = bit 0.
    pub days: i16,
    /// Minutes since local midnight, `start < end`.
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
        if start >= end {
            return Err(AssignmentError::invalid("working_hours.end", "must be after start"));
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
    pub fn contains(self, offset_minutes: Option<i32>, now: DateTime<Utc>) -> bool {
        let local = now + chrono::Duration::minutes(i64::from(offset_minutes.unwrap_or(0)));
        let day = local.weekday().num_days_from_monday();
        let minute = i32::try_from(local.hour() * 60 + local.minute()).unwrap_or(0);
        self.days & (1 << day) != 0 && (self.start..self.end).contains(&minute)
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
    fn time_zones_are_fixed_offsets() {
        assert_eq!(parse_time_zone("+02:00").unwrap(), Some(120));
        assert_eq!(parse_time_zone("-05:30").unwrap(), Some(-330));
        assert_eq!(parse_time_zone("").unwrap(), None);
        assert_eq!(format_time_zone(Some(-330)), "-05:30");
        for bad in ["Europe/Paris", "2:00", "+19:00", "+02:60"] {
            assert_eq!(field(parse_time_zone(bad)), "time_zone", "{bad}");
        }
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
        assert!(weekdays.contains(Some(120), monday));
        assert!(!weekdays.contains(None, monday));
        // Sunday 23:30 UTC is Monday 01:30 at +02:00: a workday, before the window.
        let sunday = Utc.with_ymd_and_hms(2026, 12, 6, 23, 30, 0).unwrap();
        assert!(!weekdays.contains(Some(120), sunday));
        assert_eq!(WorkingHours::parse(&hours(&[], "", "")).unwrap(), None);
        assert_eq!(field(WorkingHours::parse(&hours(&["monday"], "09:00", "17:00"))), "working_hours.days");
        assert_eq!(field(WorkingHours::parse(&hours(&["mon"], "9", "17:00"))), "working_hours.start");
        assert_eq!(field(WorkingHours::parse(&hours(&["mon"], "17:00", "09:00"))), "working_hours.end");
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
