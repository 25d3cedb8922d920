//! The Leads list's view as it lives in the URL: filters, sort, page size and page, so that a
//! view can be shared, bookmarked and reached again with the back button.

use crate::error::ConsoleError;
use contracts::lead::{SourceKind, Status};
use leads_proto::v1 as pb;

/// The pairs of a query string or urlencoded form, decoded.
pub fn pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(key), decode(value))
        })
        .collect()
}

/// The value of the first `name` of a query string (empty when it has none).
pub fn field(query: Option<&str>, name: &str) -> String {
    pairs(query.unwrap_or("")).into_iter().find(|(key, _)| key == name).map(|(_, value)| value).unwrap_or_default()
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok());
        match (bytes[i], escaped) {
            (_, Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (b'+', None) => {
                out.push(b' ');
                i += 1;
            }
            (byte, None) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Percent-encodes everything but unreserved characters.
pub fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

pub const DEFAULT_PAGE_SIZE: i32 = 50;
pub const PAGE_SIZES: [i32; 4] = [25, 50, 100, 200];

/// One view of the Leads list.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListView {
    pub statuses: Vec<Status>,
    /// `active`, `inactive` or empty.
    pub active: String,
    pub agent: String,
    pub unassigned: bool,
    /// Only leads with a follow-up that came due and is still open.
    pub overdue: bool,
    pub sources: Vec<SourceKind>,
    pub min_score: Option<i32>,
    pub max_score: Option<i32>,
    pub search: String,
    /// `last_interaction` (the default), `created` or `score`.
    pub sort: String,
    /// `desc` (the default) or `asc`.
    pub dir: String,
    pub size: i32,
    /// The page token of the page shown; empty for the first.
    pub page: String,
}

fn score(field: &str, value: &str) -> Result<Option<i32>, ConsoleError> {
    if value.trim().is_empty() {
        return Ok(None);
    }
    match value.trim().parse::<i32>() {
        Ok(score) if (0..=100).contains(&score) => Ok(Some(score)),
        _ => Err(ConsoleError::BadRequest(format!("{field}: a score is a whole number from 0 to 100"))),
    }
}

impl ListView {
    pub fn parse(query: &str) -> Result<Self, ConsoleError> {
        let mut view = ListView {
            sort: "last_interaction".into(),
            dir: "desc".into(),
            size: DEFAULT_PAGE_SIZE,
            ..Default::default()
        };
        for (key, value) in pairs(query) {
            match key.as_str() {
                "status" if !value.is_empty() => view.statuses.push(
                    value
                        .parse()
                        .map_err(|_| ConsoleError::BadRequest(format!("status: {value:?} is not a status")))?,
                ),
                "active" if matches!(value.as_str(), "active" | "inactive") => view.active = value,
                "agent" => view.agent = value.trim().to_owned(),
                "unassigned" => view.unassigned = !value.is_empty(),
                "overdue" => view.overdue = !value.is_empty(),
                "source" if !value.is_empty() => view.sources.push(
                    value
                        .parse()
                        .map_err(|_| ConsoleError::BadRequest(format!("source: {value:?} is not a source")))?,
                ),
                "min_score" => view.min_score = score("min_score", &value)?,
                "max_score" => view.max_score = score("max_score", &value)?,
                "q" => view.search = value.trim().to_owned(),
                "sort" if matches!(value.as_str(), "last_interaction" | "created" | "score") => view.sort = value,
                "dir" if matches!(value.as_str(), "asc" | "desc") => view.dir = value,
                "size" => {
                    view.size = value
                        .parse()
                        .ok()
                        .filter(|size| PAGE_SIZES.contains(size))
                        .ok_or_else(|| ConsoleError::BadRequest(format!("size: one of {PAGE_SIZES:?}")))?;
                }
                "page" => view.page = value,
                _ => {}
            }
        }
        view.statuses.dedup();
        view.sources.dedup();
        Ok(view)
    }

    pub fn to_request(&self, org_id: &str) -> pb::ListLeadsRequest {
        let filter = pb::LeadFilter {
            statuses: self.statuses.iter().map(|s| s.to_proto() as i32).collect(),
            active: match self.active.as_str() {
                "active" => pb::ActiveFilter::ActiveOnly as i32,
                "inactive" => pb::ActiveFilter::InactiveOnly as i32,
                _ => pb::ActiveFilter::Unspecified as i32,
            },
            agent_ids: if self.agent.is_empty() { Vec::new() } else { vec![self.agent.clone()] },
            unassigned: self.unassigned,
            min_score: self.min_score,
            max_score: self.max_score,
            source_kinds: self.sources.iter().map(|s| s.to_proto() as i32).collect(),
            search: self.search.clone(),
            has_overdue_follow_up: self.overdue,
            ..Default::default()
        };
        pb::ListLeadsRequest {
            org_id: org_id.to_owned(),
            filter: Some(filter),
            sort: match self.sort.as_str() {
                "created" => pb::LeadSortField::Created as i32,
                "score" => pb::LeadSortField::Score as i32,
                _ => pb::LeadSortField::LastInteraction as i32,
            },
            direction: if self.dir == "asc" { pb::SortDirection::Asc as i32 } else { pb::SortDirection::Desc as i32 },
            page_size: self.size,
            page_token: self.page.clone(),
            skip_total: false,
            with_watch_cursor: false,
        }
    }

    /// The query string of this view (without the page unless `with_page`).
    pub fn query_string(&self, with_page: bool) -> String {
        let mut parts: Vec<String> = Vec::new();
        parts.extend(self.statuses.iter().map(|s| format!("status={}", s.as_str())));
        if !self.active.is_empty() {
            parts.push(format!("active={}", self.active));
        }
        if !self.agent.is_empty() {
            parts.push(format!("agent={}", encode(&self.agent)));
        }
        if self.unassigned {
            parts.push("unassigned=1".into());
        }
        if self.overdue {
            parts.push("overdue=1".into());
        }
        parts.extend(self.sources.iter().map(|s| format!("source={}", s.as_str())));
        if let Some(min) = self.min_score {
            parts.push(format!("min_score={min}"));
        }
        if let Some(max) = self.max_score {
            parts.push(format!("max_score={max}"));
        }
        if !self.search.is_empty() {
            parts.push(format!("q={}", encode(&self.search)));
        }
        if self.sort != "last_interaction" {
            parts.push(format!("sort={}", self.sort));
        }
        if self.dir != "desc" {
            parts.push(format!("dir={}", self.dir));
        }
        if self.size != DEFAULT_PAGE_SIZE {
            parts.push(format!("size={}", self.size));
        }
        if with_page && !self.page.is_empty() {
            parts.push(format!("page={}", encode(&self.page)));
        }
        parts.join("&")
    }

    /// The URL of this view on another page.
    pub fn url_of_page(&self, page: &str) -> String {
        let view = ListView { page: page.to_owned(), ..self.clone() };
        format!("/leads?{}", view.query_string(true))
    }

    /// The URL of this view sorted by `field`: the other direction when it already is.
    pub fn url_sorted_by(&self, field: &str) -> String {
        let dir = if self.sort == field && self.dir == "desc" { "asc" } else { "desc" };
        let view = ListView { sort: field.to_owned(), dir: dir.into(), page: String::new(), ..self.clone() };
        format!("/leads?{}", view.query_string(false))
    }

    pub fn has_status(&self, status: &str) -> bool {
        self.statuses.iter().any(|s| s.as_str() == status)
    }

    pub fn has_source(&self, source: &str) -> bool {
        self.sources.iter().any(|s| s.as_str() == source)
    }

    pub fn min_score_text(&self) -> String {
        self.min_score.map(|s| s.to_string()).unwrap_or_default()
    }

    pub fn max_score_text(&self) -> String {
        self.max_score.map(|s| s.to_string()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_view_goes_to_its_url_and_back() {
        let query = "status=new&status=contacted&active=active&agent=ann%20b&overdue=1&source=chat_message&min_score=70&q=ana+maria&sort=score&dir=asc&size=100&page=abc%3D";
        let view = ListView::parse(query).unwrap();
        assert_eq!(view.statuses, [Status::New, Status::Contacted]);
        assert_eq!((view.agent.as_str(), view.search.as_str(), view.page.as_str()), ("ann b", "ana maria", "abc="));
        assert_eq!(ListView::parse(&view.query_string(true)).unwrap(), view);
        let request = view.to_request("acme");
        let filter = request.filter.unwrap();
        assert_eq!(
            (filter.min_score, request.page_size, request.sort),
            (Some(70), 100, pb::LeadSortField::Score as i32)
        );
        assert!(filter.has_overdue_follow_up);
        assert_eq!(ListView::parse("").unwrap().query_string(true), "", "the default view has a bare URL");
    }

    #[test]
    fn a_bad_value_is_refused_naming_its_field() {
        for (query, field) in
            [("status=open", "status"), ("min_score=101", "min_score"), ("size=7", "size"), ("source=fax", "source")]
        {
            let Err(ConsoleError::BadRequest(message)) = ListView::parse(query) else { panic!("{query} accepted") };
            assert!(message.starts_with(field), "{query}: {message}");
        }
    }

    #[test]
    fn text_survives_encoding_whatever_it_holds() {
        for text in ["<img src=x onerror=alert(1)>", "a&b=c", "ñandú 100%", "+33 6 12"] {
            assert_eq!(pairs(&format!("q={}", encode(text))), [("q".to_owned(), text.to_owned())]);
        }
    }
}
