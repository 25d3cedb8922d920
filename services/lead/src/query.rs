//! ListLeads: combinable filters, keyset pagination with opaque tokens, and the total count.

use crate::{error::LeadError, model::LEAD_VIEW_COLUMNS};
use chrono::{DateTime, Utc};
use contracts::lead::{LeadView, ScoreSource, SourceKind, Status};
use contracts::time::from_timestamp;
use leads_proto::v1 as pb;
use sqlx::{Postgres, QueryBuilder};
use uuid::Uuid;

pub const DEFAULT_PAGE_SIZE: i64 = 50;
pub const MAX_PAGE_SIZE: i64 = 500;
/// A search box's text, not a document: every word of it becomes a term of the query.
pub const MAX_SEARCH_CHARS: usize = 200;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortField {
    LastInteraction,
    Created,
    Score,
}

impl SortField {
    fn expression(self) -> &'static str {
        match self {
            SortField::LastInteraction => "l.last_interaction_at",
            SortField::Created => "l.created_at",
            SortField::Score => "coalesce(l.score, -1)",
        }
    }

    fn code(self) -> &'static str {
        match self {
            SortField::LastInteraction => "li",
            SortField::Created => "cr",
            SortField::Score => "sc",
        }
    }
}

/// A validated ListLeads request.
#[derive(Debug, Clone)]
pub struct LeadQuery {
    pub org_id: String,
    pub filter: pb::LeadFilter,
    pub statuses: Vec<Status>,
    pub sort: SortField,
    pub descending: bool,
    pub page_size: i64,
    pub after: Option<Cursor>,
    /// `filter.search` as conditions, split once here for the page, its total and exports.
    pub search: Search,
}

/// Where a page ends: the sort key and id of its last lead.
#[derive(Debug, Clone, PartialEq)]
pub enum Cursor {
    Time(DateTime<Utc>, Uuid),
    Score(i64, Uuid),
}

/// Narrows `filter` to what an agent may see: its own leads and the unassigned ones. Asking
/// for another agent's leads is refused rather than answered with an empty page, so that a
/// console never shows "no leads" where it means "not yours".
fn confine_to_agent(filter: &mut pb::LeadFilter, agent: &str) -> Result<(), LeadError> {
    if filter.agent_ids.iter().any(|id| id != agent) {
        return Err(LeadError::Forbidden("an agent lists its own leads and the unassigned ones".into()));
    }
    if filter.agent_ids.is_empty() && !filter.unassigned {
        filter.agent_ids.push(agent.to_owned());
        filter.unassigned = true;
    }
    Ok(())
}

impl LeadQuery {
    pub fn parse(request: &pb::ListLeadsRequest) -> Result<Self, LeadError> {
        Self::parse_for(request, None)
    }

    /// `parse`, for a caller confined to `agent`'s leads and the unassigned ones when given.
    pub fn parse_for(request: &pb::ListLeadsRequest, agent: Option<&str>) -> Result<Self, LeadError> {
        crate::validate_org(&request.org_id)?;
        let mut filter = request.filter.clone().unwrap_or_default();
        if let Some(agent) = agent {
            confine_to_agent(&mut filter, agent)?;
        }
        let statuses = filter
            .statuses
            .iter()
            .map(|s| {
                Status::from_proto(*s)
                    .ok_or_else(|| LeadError::invalid("filter.statuses", format!("{s} is not a status")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if filter.search.chars().count() > MAX_SEARCH_CHARS {
            return Err(LeadError::invalid("filter.search", format!("at most {MAX_SEARCH_CHARS} characters")));
        }
        for (field, value) in [("filter.min_score", filter.min_score), ("filter.max_score", filter.max_score)] {
            if let Some(score) = value
                && !(0..=100).contains(&score)
            {
                return Err(LeadError::invalid(field, "must be between 0 and 100"));
            }
        }
        let sort = match pb::LeadSortField::try_from(request.sort) {
            Ok(pb::LeadSortField::Unspecified | pb::LeadSortField::LastInteraction) => SortField::LastInteraction,
            Ok(pb::LeadSortField::Created) => SortField::Created,
            Ok(pb::LeadSortField::Score) => SortField::Score,
            Err(_) => return Err(LeadError::invalid("sort", "is not a sort field")),
        };
        let descending = match pb::SortDirection::try_from(request.direction) {
            Ok(pb::SortDirection::Unspecified | pb::SortDirection::Desc) => true,
            Ok(pb::SortDirection::Asc) => false,
            Err(_) => return Err(LeadError::invalid("direction", "is not a direction")),
        };
        let page_size = match i64::from(request.page_size) {
            0 => DEFAULT_PAGE_SIZE,
            n if (1..=MAX_PAGE_SIZE).contains(&n) => n,
            _ => {
                return Err(LeadError::invalid("page_size", format!("must be between 1 and {MAX_PAGE_SIZE}")));
            }
        };
        let after = if request.page_token.is_empty() {
            None
        } else {
            Some(decode_token(&request.page_token, sort, descending)?)
        };
        let search = search_query(&filter.search);
        Ok(Self { org_id: request.org_id.clone(), filter, statuses, sort, descending, page_size, after, search })
    }

    /// Appends `WHERE ...` for the filters (not the cursor), a search's words matched on the
    /// contacts.
    pub fn push_filters(&self, sql: &mut QueryBuilder<Postgres>) -> Result<(), LeadError> {
        self.push_filters_matching(sql, WordsOn::Contacts)
    }

    /// Appends `WHERE ...` for the filters (not the cursor), a search's words matched `on`.
    pub fn push_filters_matching(&self, sql: &mut QueryBuilder<Postgres>, on: WordsOn) -> Result<(), LeadError> {
        let f = &self.filter;
        sql.push(" WHERE l.org_id = ").push_bind(&self.org_id);
        // One value is compared with `=` rather than `= ANY`: Postgres 15 reads an index in
        // order only for `=`, so a single agent's or status's page walks leads_by_agent or
        // leads_by_status instead of sorting every match, which keeps later pages as fast as
        // the first.
        match self.statuses.as_slice() {
            [] => {}
            [status] => {
                sql.push(" AND l.status = ").push_bind(status.as_str());
            }
            statuses => {
                let statuses: Vec<&str> = statuses.iter().map(|s| s.as_str()).collect();
                sql.push(" AND l.status = ANY(").push_bind(statuses).push(")");
            }
        }
        match pb::ActiveFilter::try_from(f.active) {
            Ok(pb::ActiveFilter::ActiveOnly) => {
                sql.push(" AND l.active");
            }
            Ok(pb::ActiveFilter::InactiveOnly) => {
                sql.push(" AND NOT l.active");
            }
            Ok(pb::ActiveFilter::Unspecified) => {}
            Err(_) => {
                return Err(LeadError::invalid("filter.active", "is not an active filter"));
            }
        }
        match (f.unassigned, f.agent_ids.is_empty()) {
            (true, true) => {
                sql.push(" AND l.agent_id IS NULL");
            }
            (true, false) => {
                sql.push(" AND (l.agent_id IS NULL OR l.agent_id = ANY(").push_bind(&f.agent_ids).push("))");
            }
            (false, false) if f.agent_ids.len() == 1 => {
                sql.push(" AND l.agent_id = ").push_bind(&f.agent_ids[0]);
            }
            (false, false) => {
                sql.push(" AND l.agent_id = ANY(").push_bind(&f.agent_ids).push(")");
            }
            (false, true) => {}
        }
        if let Some(min) = f.min_score {
            sql.push(" AND l.score >= ").push_bind(min);
        }
        if let Some(max) = f.max_score {
            sql.push(" AND l.score <= ").push_bind(max);
        }
        if let Some(source) = ScoreSource::from_proto(f.score_source) {
            sql.push(" AND l.score_source = ").push_bind(source.as_str());
        } else if f.score_source != pb::ScoreSource::Unspecified as i32 {
            return Err(LeadError::invalid("filter.score_source", "is not a score source"));
        }
        if !f.source_kinds.is_empty() {
            let kinds = f
                .source_kinds
                .iter()
                .map(|k| {
                    SourceKind::from_proto(*k)
                        .map(SourceKind::as_str)
                        .ok_or_else(|| LeadError::invalid("filter.source_kinds", format!("{k} is not a source kind")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            sql.push(" AND l.source_kind = ANY(").push_bind(kinds).push(")");
        }
        if !f.campaign_id.is_empty() {
            sql.push(" AND l.campaign_id = ").push_bind(&f.campaign_id);
        }
        if !f.integration_name.is_empty() {
            sql.push(" AND l.integration_name = ").push_bind(&f.integration_name);
        }
        if !f.contact_id.is_empty() {
            let id: Uuid = f.contact_id.parse().map_err(|_| LeadError::invalid("filter.contact_id", "is not an id"))?;
            sql.push(" AND l.contact_id = ").push_bind(id);
        }
        if f.has_overdue_follow_up {
            sql.push(" AND EXISTS (SELECT 1 FROM follow_up_overdue o WHERE o.lead_id = l.id AND o.overdue)");
        }
        push_range(sql, "l.created_at", f.created.as_ref(), "filter.created")?;
        push_range(sql, "l.last_interaction_at", f.last_interaction.as_ref(), "filter.last_interaction")?;
        match &self.search {
            Search { words: Some(words), digits: Some(digits) } => {
                sql.push(" AND (c.search_words @@ ").push_bind(words).push("::tsquery OR ");
                push_phone_digits(sql, digits);
                sql.push(")");
            }
            Search { words: Some(words), digits: None } => {
                let column = match on {
                    WordsOn::Contacts => " AND c.search_words @@ ",
                    WordsOn::Leads => " AND l.search_words @@ ",
                };
                sql.push(column).push_bind(words).push("::tsquery");
            }
            Search { words: None, digits: Some(digits) } => {
                sql.push(" AND ");
                push_phone_digits(sql, digits);
            }
            Search { words: None, digits: None } => {}
        }
        Ok(())
    }

    /// The score deciles `[min, max]` covers exactly, when it covers whole deciles.
    fn score_buckets(&self) -> Option<Option<(i16, i16)>> {
        let (min, max) = (self.filter.min_score, self.filter.max_score);
        if min.is_none() && max.is_none() {
            return Some(None);
        }
        let (min, max) = (min.unwrap_or(0), max.unwrap_or(100));
        let aligned = min % 10 == 0 && (max == 100 || max % 10 == 9);
        aligned.then(|| Some(((min / 10) as i16, (max.min(100) / 10) as i16)))
    }

    /// The smallest maintained table with every dimension the filters name: the totals by
    /// status and agent, by status and score decile, or all of `lead_counts`.
    pub fn maintained_totals(&self) -> MaintainedTotals {
        let f = &self.filter;
        let by_source = !f.source_kinds.is_empty() || ScoreSource::from_proto(f.score_source).is_some();
        let by_score = f.min_score.is_some() || f.max_score.is_some();
        let by_agent = f.unassigned || !f.agent_ids.is_empty();
        match (by_source, by_score, by_agent) {
            (false, false, _) => MaintainedTotals::ByStatusAndAgent,
            (false, true, false) => MaintainedTotals::ByStatusAndScore,
            _ => MaintainedTotals::Everything,
        }
    }

    /// Appends the filters as conditions on `lead_counts` (alias `k`), when every filter is
    /// one of its dimensions; `false` means the total must be counted from the rows.
    pub fn push_count_filters(&self, sql: &mut QueryBuilder<Postgres>) -> bool {
        let f = &self.filter;
        let counted = f.campaign_id.is_empty()
            && f.integration_name.is_empty()
            && f.contact_id.is_empty()
            && !f.has_overdue_follow_up
            && f.created.is_none()
            && f.last_interaction.is_none()
            && f.search.trim().is_empty();
        let Some(buckets) = self.score_buckets().filter(|_| counted) else { return false };
        sql.push(" WHERE k.org_id = ").push_bind(self.org_id.clone());
        if !self.statuses.is_empty() {
            let statuses: Vec<&str> = self.statuses.iter().map(|s| s.as_str()).collect();
            sql.push(" AND k.status = ANY(").push_bind(statuses).push(")");
        }
        match pb::ActiveFilter::try_from(f.active) {
            Ok(pb::ActiveFilter::ActiveOnly) => {
                sql.push(" AND k.status NOT IN ('converted', 'lost', 'archived')");
            }
            Ok(pb::ActiveFilter::InactiveOnly) => {
                sql.push(" AND k.status IN ('converted', 'lost', 'archived')");
            }
            _ => {}
        }
        match (f.unassigned, f.agent_ids.is_empty()) {
            (true, true) => {
                sql.push(" AND k.agent_id = ''");
            }
            (true, false) => {
                sql.push(" AND (k.agent_id = '' OR k.agent_id = ANY(").push_bind(f.agent_ids.clone()).push("))");
            }
            (false, false) => {
                sql.push(" AND k.agent_id = ANY(").push_bind(f.agent_ids.clone()).push(")");
            }
            (false, true) => {}
        }
        if let Some(source) = ScoreSource::from_proto(f.score_source) {
            sql.push(" AND k.score_source = ").push_bind(source.as_str());
        }
        if !f.source_kinds.is_empty() {
            let kinds: Vec<&str> =
                f.source_kinds.iter().filter_map(|k| SourceKind::from_proto(*k)).map(SourceKind::as_str).collect();
            sql.push(" AND k.source_kind = ANY(").push_bind(kinds).push(")");
        }
        if let Some((low, high)) = buckets {
            sql.push(" AND k.score_bucket BETWEEN ").push_bind(low).push(" AND ").push_bind(high);
        }
        true
    }

    /// Whether the filters include a search, which needs the contacts joined. Its best plan
    /// depends on how common its words are, so it is planned for its own words every time
    /// rather than from a cached generic plan.
    pub fn has_search(&self) -> bool {
        self.search != Search::default()
    }

    /// The page's SELECT: filters, cursor, order and limit (one more than the page, to know
    /// whether another page follows).
    pub fn page_sql(&self, words_on: WordsOn) -> Result<QueryBuilder<Postgres>, LeadError> {
        let mut sql = QueryBuilder::new(format!(
            "SELECT {LEAD_VIEW_COLUMNS} FROM leads l JOIN contacts c ON c.id = l.contact_id"
        ));
        self.push_filters_matching(&mut sql, words_on)?;
        self.push_cursor(&mut sql, self.after.as_ref());
        self.push_order(&mut sql);
        sql.push(" LIMIT ").push_bind(self.page_size + 1);
        Ok(sql)
    }

    pub fn push_cursor(&self, sql: &mut QueryBuilder<Postgres>, cursor: Option<&Cursor>) {
        let Some(cursor) = cursor else { return };
        let op = if self.descending { " < " } else { " > " };
        sql.push(format!(" AND ({}, l.id){op}(", self.sort.expression()));
        let id = match cursor {
            Cursor::Time(at, id) => {
                sql.push_bind(*at);
                id
            }
            Cursor::Score(score, id) => {
                sql.push_bind(*score as i32);
                id
            }
        };
        sql.push(", ").push_bind(*id).push(")");
    }

    pub fn push_order(&self, sql: &mut QueryBuilder<Postgres>) {
        let dir = if self.descending { "DESC" } else { "ASC" };
        sql.push(format!(" ORDER BY {} {dir}, l.id {dir}", self.sort.expression()));
    }

    pub fn cursor_of(&self, lead: &LeadView) -> Cursor {
        match self.sort {
            SortField::LastInteraction => Cursor::Time(lead.last_interaction_at, lead.id),
            SortField::Created => Cursor::Time(lead.created_at, lead.id),
            SortField::Score => Cursor::Score(i64::from(lead.score.unwrap_or(-1)), lead.id),
        }
    }

    pub fn token_of(&self, lead: &LeadView) -> String {
        let key = match self.cursor_of(lead) {
            Cursor::Time(at, _) => at.timestamp_micros().to_string(),
            Cursor::Score(score, _) => score.to_string(),
        };
        let dir = if self.descending { "d" } else { "a" };
        let plain = format!("v1|{}|{dir}|{key}|{}", self.sort.code(), lead.id);
        platform::token::encode(&plain)
    }
}

/// The maintained tables a total can be summed from, smallest first (lead migrations 0003,
/// 0017 and 0019), each beside the deltas not yet folded into it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaintainedTotals {
    /// `lead_totals`: a row per status and agent.
    ByStatusAndAgent,
    /// `lead_score_totals`: a row per status and score decile.
    ByStatusAndScore,
    /// `lead_counts`: a row per status, agent, source, score source and score decile.
    Everything,
}

impl MaintainedTotals {
    /// The table with the deltas, as `k`'s rows, with the columns `push_count_filters` names.
    pub fn rows(self) -> &'static str {
        match self {
            Self::ByStatusAndAgent => {
                "(SELECT org_id, status, agent_id, n FROM lead_totals \
                 UNION ALL SELECT org_id, status, agent_id, n FROM lead_count_deltas) k"
            }
            Self::ByStatusAndScore => {
                "(SELECT org_id, status, score_bucket, n FROM lead_score_totals \
                 UNION ALL SELECT org_id, status, score_bucket, n FROM lead_count_deltas) k"
            }
            Self::Everything => {
                "(SELECT * FROM lead_counts UNION ALL SELECT org_id, status, agent_id, source_kind, score_source, \
                 score_bucket, n FROM lead_count_deltas) k"
            }
        }
    }
}

/// Where a search's words are matched. Both give the same leads (lead migration 0009 keeps
/// each lead's copy of its contact's words); they differ in the plan they lead to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WordsOn {
    /// The contacts' words, through their index: rare words, few contacts to start from.
    Contacts,
    /// The lead rows' copy, checked while the leads are read in the page's order: common
    /// words, where a page is found long before every matching contact could be read.
    Leads,
}

/// A search box's text as conditions on a contact.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Search {
    /// A `tsquery` over `contacts.search_words` (lead migration 0008): the search's words in
    /// order, the last one a prefix. Words are letter runs, as the column splits them.
    pub words: Option<String>,
    /// The search's digits, in order, to be found in the phone, when there are three or more.
    pub digits: Option<String>,
}

/// Splits a search the way `contact_search_words` splits a name and email: lower case, at
/// anything that is not a letter. One word is a prefix ('lov':*); several are their
/// neighbouring pairs, all but the last pair whole ('ada lovelace' & 'lovelace sm':*), so a
/// search names the words in the order they are written.
pub fn search_query(search: &str) -> Search {
    let mut words: Vec<String> = Vec::new();
    let mut in_word = false;
    for c in search.chars().flat_map(char::to_lowercase) {
        if c.is_alphabetic() {
            match words.last_mut() {
                Some(word) if in_word => word.push(c),
                _ => words.push(c.to_string()),
            }
            in_word = true;
        } else {
            in_word = false;
        }
    }
    let words = match words.as_slice() {
        [] => None,
        [word] => Some(format!("'{word}':*")),
        _ => {
            let pairs: Vec<String> = words.windows(2).map(|pair| format!("'{} {}'", pair[0], pair[1])).collect();
            Some(format!("{}:*", pairs.join(" & ")))
        }
    };
    let digits: String = search.chars().filter(char::is_ascii_digit).collect();
    let digits = (digits.len() >= 3).then_some(digits);
    Search { words, digits }
}

/// How many of a search's last digits find its candidate phones through the index.
const PROBED_DIGITS: usize = 6;

/// A condition that the phone holds `digits` in a row. Phones are E.164, the digits after the
/// '+', which lead migration 0006 indexes by trigram. One business's numbers share their
/// leading digits (country and area codes), whose trigrams are in nearly every phone: reading
/// those posting lists took 80 ms at ten million contacts where the rest took 4 ms. So a
/// longer search looks its phones up by its last digits, the ones that tell numbers apart,
/// and checks the whole run on the phone column itself, which no index covers.
fn push_phone_digits(sql: &mut QueryBuilder<Postgres>, digits: &str) {
    let whole = format!("%{digits}%");
    match digits.len().checked_sub(PROBED_DIGITS) {
        Some(from) if from > 0 => {
            sql.push("(substr(c.phone, 2) LIKE ").push_bind(format!("%{}%", &digits[from..]));
            sql.push(" AND c.phone LIKE ").push_bind(whole).push(")");
        }
        _ => {
            sql.push("substr(c.phone, 2) LIKE ").push_bind(whole);
        }
    }
}

fn push_range(
    sql: &mut QueryBuilder<Postgres>,
    column: &str,
    range: Option<&pb::TimeRange>,
    field: &'static str,
) -> Result<(), LeadError> {
    let Some(range) = range else { return Ok(()) };
    if let Some(from) = &range.from {
        let from = from_timestamp(from).ok_or_else(|| LeadError::invalid(field, "from is not a valid time"))?;
        sql.push(format!(" AND {column} >= ")).push_bind(from);
    }
    if let Some(to) = &range.to {
        let to = from_timestamp(to).ok_or_else(|| LeadError::invalid(field, "to is not a valid time"))?;
        sql.push(format!(" AND {column} < ")).push_bind(to);
    }
    Ok(())
}

fn decode_token(token: &str, sort: SortField, descending: bool) -> Result<Cursor, LeadError> {
    let bad = || LeadError::invalid("page_token", "is not a token issued for this sort order");
    let plain = platform::token::decode(token).ok_or_else(bad)?;
    let parts: Vec<&str> = plain.split('|').collect();
    let dir = if descending { "d" } else { "a" };
    let [version, code, token_dir, key, id] = parts.as_slice() else {
        return Err(bad());
    };
    if *version != "v1" || *code != sort.code() || *token_dir != dir {
        return Err(bad());
    }
    let id: Uuid = id.parse().map_err(|_| bad())?;
    match sort {
        SortField::Score => Ok(Cursor::Score(key.parse().map_err(|_| bad())?, id)),
        _ => {
            let micros: i64 = key.parse().map_err(|_| bad())?;
            Ok(Cursor::Time(DateTime::from_timestamp_micros(micros).ok_or_else(bad)?, id))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_search_is_split_as_the_contact_words_are() {
        let words = |s: &str| search_query(s).words;
        assert_eq!(words("Lov"), Some("'lov':*".into()));
        assert_eq!(words("Ada  LOVELACE, sm"), Some("'ada lovelace' & 'lovelace sm':*".into()));
        assert_eq!(words("lovelace12@ex"), Some("'lovelace ex':*".into()), "digits and punctuation split words");
        assert_eq!(words("José O'Brien"), Some("'josé o' & 'o brien':*".into()));
        assert_eq!(words("+1 (415) 555"), None);
        assert_eq!(search_query("+1 (415) 555").digits, Some("1415555".into()));
        assert_eq!(search_query("ab 12").digits, None, "fewer than three digits name no phone");
        assert_eq!(search_query(" -- "), Search::default());
    }
}
