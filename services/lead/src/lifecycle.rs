//! The lead's lifecycle in one place: which acts a lead in a given status allows, and what
//! each does to its status. Every writer of a lead (status changes single and bulk,
//! assignments, follow-ups, AI scores, interactions) asks `decide` under the lead's row lock
//! and writes what it answers, so the rules are read here and nowhere else.
//!
//! - New, Contacted, Qualifying, Qualified and Follow-up are active; Converted, Lost and
//!   Archived are final. A final lead refuses every act (it stays readable).
//! - An operator may move an active lead to any status, final ones included.
//! - The business's outbound message moves a New lead to Contacted; any other status stays.
//! - Assigning, opening a follow-up, an AI score, an inbound message and a manual score
//!   (set or handed back, with the status kept or restated) leave the status as it is.
//! - A score set by hand wins: an AI score leaves a lead scored by hand unchanged.
//!
//! On top of these, each organisation may turn on status rules (`StatusRules`, all off by
//! default), which `rule_move` decides: AI score thresholds, Follow-up while a follow-up is
//! open, broadcast replies opening as Contacted, and archiving idle leads. A rule never
//! touches an inactive lead, and the rules the platform sets off by itself (scores, idleness)
//! never override a status a person set after the lead's last interaction. The follow-up rules
//! answer a person's own later act (opening, completing or cancelling a follow-up), so they
//! apply whoever set the status before.

use contracts::lead::{ScoreSource, SourceKind, Status};
use serde::{Deserialize, Serialize};

/// Something done to a lead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    /// An operator's `ChangeStatus` or `BulkChangeStatus` to `to`; `with_score` when the
    /// request also sets the score by hand or hands it back to the engine.
    ChangeStatus {
        to: Status,
        with_score: bool,
    },
    /// An operator's `ChangeStatus` that sets the score by hand or hands it back to the
    /// engine without naming a status: the status is kept.
    SetScore,
    Assign,
    OpenFollowUp,
    /// The qualification engine's score, for a lead whose score was last set by `scored_by`.
    AiScore {
        scored_by: Option<ScoreSource>,
    },
    /// A message of the contact's.
    Inbound,
    /// A message of the business's.
    Outbound,
}

/// What an allowed act does to the lead's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Nothing about the lead changes (a status change to the status it has, with no score;
    /// an AI score for a lead scored by hand).
    Unchanged,
    /// The status stays; the act changes something else (score, agent, follow-up, counts),
    /// and no status change is recorded.
    Stays(Status),
    /// The status moves; a status change is recorded and `status_changed` published.
    Moves { from: Status, to: Status },
}

impl Transition {
    /// The status after the act.
    pub fn status(self, current: Status) -> Status {
        match self {
            Transition::Unchanged => current,
            Transition::Stays(status) => status,
            Transition::Moves { to, .. } => to,
        }
    }
}

/// A final lead refuses every act; its status is in the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inactive(pub Status);

/// Whether `act` is allowed on a lead in `current`, and what it does.
pub fn decide(current: Status, act: Act) -> Result<Transition, Inactive> {
    if current.is_final() {
        return Err(Inactive(current));
    }
    Ok(match act {
        Act::ChangeStatus { to, with_score } if to == current => {
            if with_score {
                Transition::Stays(current)
            } else {
                Transition::Unchanged
            }
        }
        Act::ChangeStatus { to, .. } => Transition::Moves { from: current, to },
        Act::Outbound if current == Status::New => Transition::Moves { from: Status::New, to: Status::Contacted },
        Act::AiScore { scored_by: Some(ScoreSource::Manual) } => Transition::Unchanged,
        Act::SetScore | Act::Assign | Act::OpenFollowUp | Act::AiScore { .. } | Act::Inbound | Act::Outbound => {
            Transition::Stays(current)
        }
    })
}

/// An organisation's status rules, each off until an admin turns it on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
// Unknown fields are ignored: settings written by a newer version still read.
#[serde(default)]
pub struct StatusRules {
    /// A New or Contacted lead whose AI score reaches this moves to Qualifying.
    pub qualifying_at: Option<i32>,
    /// A New, Contacted or Qualifying lead whose AI score reaches this moves to Qualified.
    pub qualified_at: Option<i32>,
    /// Opening a follow-up moves the lead to Follow-up; closing its last open one moves it on.
    pub follow_up_status: bool,
    /// Where a lead goes when its last open follow-up closes; `None`: back where it was.
    pub after_follow_ups: Option<Status>,
    /// A lead opened by a reply to a broadcast starts as Contacted.
    pub broadcast_reply_contacted: bool,
    /// An active lead with no interaction for this many days is archived.
    pub archive_after_days: Option<i32>,
}

/// A status rule, by the name the lead's history records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    AiScoreQualifying,
    AiScoreQualified,
    FollowUpOpened,
    FollowUpsClosed,
    BroadcastReplyContacted,
    ArchiveIdle,
}

impl Rule {
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::AiScoreQualifying => "ai_score_qualifying",
            Rule::AiScoreQualified => "ai_score_qualified",
            Rule::FollowUpOpened => "follow_up_opened",
            Rule::FollowUpsClosed => "follow_ups_closed",
            Rule::BroadcastReplyContacted => "broadcast_reply_contacted",
            Rule::ArchiveIdle => "archive_idle",
        }
    }
}

/// What happened to a lead that a rule may act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The engine scored the lead (and the score applied).
    AiScore(i32),
    FollowUpOpened,
    /// The lead's last open follow-up was completed or cancelled; `before` is the status the
    /// lead had when it last moved to Follow-up, when known.
    LastFollowUpClosed {
        before: Option<Status>,
    },
    /// The lead has had no interaction for the organisation's `archive_after_days`.
    Idle,
}

/// A lead as the rules see it, read under its lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleSubject {
    pub status: Status,
    /// A person set its status after its last interaction: that choice stands against the
    /// rules the platform sets off by itself.
    pub held_by_hand: bool,
}

/// The move a rule makes, with the words the history shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleMove {
    pub from: Status,
    pub to: Status,
    pub rule: Rule,
    pub reason: String,
}

/// The move the organisation's rules make on `lead` after `trigger`, if any.
pub fn rule_move(rules: &StatusRules, lead: RuleSubject, trigger: Trigger) -> Option<RuleMove> {
    let set_off_by_the_platform = matches!(trigger, Trigger::AiScore(_) | Trigger::Idle);
    if lead.status.is_final() || (lead.held_by_hand && set_off_by_the_platform) {
        return None;
    }
    let from = lead.status;
    let (to, rule, reason) = match trigger {
        Trigger::AiScore(score) => {
            let reached = |threshold: Option<i32>| threshold.filter(|at| score >= *at);
            if let Some(at) = reached(rules.qualified_at)
                && matches!(from, Status::New | Status::Contacted | Status::Qualifying)
            {
                (Status::Qualified, Rule::AiScoreQualified, format!("AI score {score} reached {at}"))
            } else if let Some(at) = reached(rules.qualifying_at)
                && matches!(from, Status::New | Status::Contacted)
            {
                (Status::Qualifying, Rule::AiScoreQualifying, format!("AI score {score} reached {at}"))
            } else {
                return None;
            }
        }
        Trigger::FollowUpOpened if rules.follow_up_status && from != Status::FollowUp => {
            (Status::FollowUp, Rule::FollowUpOpened, "a follow-up was opened".to_owned())
        }
        Trigger::LastFollowUpClosed { before } if rules.follow_up_status && from == Status::FollowUp => {
            let back = before.filter(|s| !s.is_final() && *s != Status::FollowUp);
            let to = rules.after_follow_ups.or(back).unwrap_or(Status::Contacted);
            (to, Rule::FollowUpsClosed, "its last open follow-up closed".to_owned())
        }
        Trigger::Idle => match rules.archive_after_days {
            Some(days) => (Status::Archived, Rule::ArchiveIdle, format!("no interaction for {days} days")),
            None => return None,
        },
        Trigger::FollowUpOpened | Trigger::LastFollowUpClosed { .. } => return None,
    };
    (to != from).then_some(RuleMove { from, to, rule, reason })
}

/// The status a lead opened by a message of `source` starts in, when a rule moves it from New.
pub fn opening_move(rules: &StatusRules, source: SourceKind) -> Option<RuleMove> {
    (rules.broadcast_reply_contacted && source == SourceKind::BroadcastReply).then(|| RuleMove {
        from: Status::New,
        to: Status::Contacted,
        rule: Rule::BroadcastReplyContacted,
        reason: "opened by a reply to a broadcast".to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Status; 8] = Status::ALL;

    fn acts() -> Vec<Act> {
        let mut acts = vec![Act::SetScore, Act::Assign, Act::OpenFollowUp, Act::Inbound, Act::Outbound];
        acts.push(Act::AiScore { scored_by: None });
        for source in ScoreSource::ALL {
            acts.push(Act::AiScore { scored_by: Some(source) });
        }
        for to in ALL {
            acts.push(Act::ChangeStatus { to, with_score: false });
            acts.push(Act::ChangeStatus { to, with_score: true });
        }
        acts
    }

    #[test]
    fn a_final_lead_refuses_every_act() {
        for current in [Status::Converted, Status::Lost, Status::Archived] {
            for act in acts() {
                assert_eq!(decide(current, act), Err(Inactive(current)), "{current:?} {act:?}");
            }
        }
    }

    #[test]
    fn an_operator_moves_an_active_lead_anywhere() {
        for current in ALL.into_iter().filter(|s| !s.is_final()) {
            for to in ALL.into_iter().filter(|to| *to != current) {
                let act = Act::ChangeStatus { to, with_score: false };
                assert_eq!(decide(current, act), Ok(Transition::Moves { from: current, to }));
            }
        }
    }

    #[test]
    fn a_manual_score_alone_records_no_status_change() {
        let same = Act::ChangeStatus { to: Status::Qualifying, with_score: true };
        assert_eq!(decide(Status::Qualifying, same), Ok(Transition::Stays(Status::Qualifying)));
        let nothing = Act::ChangeStatus { to: Status::Qualifying, with_score: false };
        assert_eq!(decide(Status::Qualifying, nothing), Ok(Transition::Unchanged));
        for current in ALL.into_iter().filter(|s| !s.is_final()) {
            assert_eq!(decide(current, Act::SetScore), Ok(Transition::Stays(current)), "{current:?}");
        }
    }

    #[test]
    fn only_the_first_outbound_message_moves_a_new_lead() {
        assert_eq!(
            decide(Status::New, Act::Outbound),
            Ok(Transition::Moves { from: Status::New, to: Status::Contacted })
        );
        for current in [Status::Contacted, Status::Qualifying, Status::Qualified, Status::FollowUp] {
            assert_eq!(decide(current, Act::Outbound), Ok(Transition::Stays(current)));
        }
        assert_eq!(decide(Status::New, Act::Inbound), Ok(Transition::Stays(Status::New)));
    }

    #[test]
    fn gated_acts_keep_the_status_of_an_active_lead() {
        for current in ALL.into_iter().filter(|s| !s.is_final()) {
            for act in [Act::Assign, Act::OpenFollowUp, Act::AiScore { scored_by: None }] {
                let transition = decide(current, act).expect("allowed");
                assert_eq!(transition, Transition::Stays(current));
                assert_eq!(transition.status(current), current);
            }
        }
    }

    #[test]
    fn an_ai_score_applies_to_an_active_lead_unscored_or_scored_by_the_engine() {
        for current in ALL.into_iter().filter(|s| !s.is_final()) {
            for scored_by in [None, Some(ScoreSource::Ai)] {
                assert_eq!(decide(current, Act::AiScore { scored_by }), Ok(Transition::Stays(current)));
            }
        }
    }

    #[test]
    fn a_score_set_by_hand_wins_over_an_ai_score() {
        for current in ALL.into_iter().filter(|s| !s.is_final()) {
            let act = Act::AiScore { scored_by: Some(ScoreSource::Manual) };
            assert_eq!(decide(current, act), Ok(Transition::Unchanged), "{current:?}");
        }
    }

    #[test]
    fn an_inactive_lead_is_never_rescored() {
        for current in [Status::Converted, Status::Lost, Status::Archived] {
            for scored_by in [None, Some(ScoreSource::Ai), Some(ScoreSource::Manual)] {
                assert_eq!(decide(current, Act::AiScore { scored_by }), Err(Inactive(current)));
            }
        }
    }

    fn free(status: Status) -> RuleSubject {
        RuleSubject { status, held_by_hand: false }
    }

    fn every_rule() -> StatusRules {
        StatusRules {
            qualifying_at: Some(50),
            qualified_at: Some(80),
            follow_up_status: true,
            after_follow_ups: None,
            broadcast_reply_contacted: true,
            archive_after_days: Some(30),
        }
    }

    fn triggers() -> Vec<Trigger> {
        vec![
            Trigger::AiScore(100),
            Trigger::FollowUpOpened,
            Trigger::LastFollowUpClosed { before: Some(Status::Contacted) },
            Trigger::Idle,
        ]
    }

    #[test]
    fn rules_that_are_off_move_nothing() {
        for status in ALL {
            for trigger in triggers() {
                assert_eq!(rule_move(&StatusRules::default(), free(status), trigger), None, "{status:?} {trigger:?}");
            }
        }
        assert_eq!(opening_move(&StatusRules::default(), SourceKind::BroadcastReply), None);
    }

    #[test]
    fn a_rule_never_touches_an_inactive_lead_nor_a_scores_or_idleness_a_status_a_person_set_since() {
        for status in ALL {
            for trigger in triggers() {
                if status.is_final() {
                    assert_eq!(rule_move(&every_rule(), free(status), trigger), None, "{status:?} {trigger:?}");
                }
            }
            for trigger in [Trigger::AiScore(100), Trigger::Idle] {
                let held = RuleSubject { status, held_by_hand: true };
                assert_eq!(rule_move(&every_rule(), held, trigger), None, "{status:?} {trigger:?}");
            }
        }
        // Opening a follow-up is a person's act after the status they set.
        let held = RuleSubject { status: Status::Qualified, held_by_hand: true };
        assert_eq!(rule_move(&every_rule(), held, Trigger::FollowUpOpened).map(|m| m.to), Some(Status::FollowUp));
    }

    #[test]
    fn ai_scores_move_leads_up_to_the_threshold_they_reach_never_down() {
        let rules = every_rule();
        let moved = |status, score| rule_move(&rules, free(status), Trigger::AiScore(score)).map(|m| (m.to, m.rule));
        assert_eq!(moved(Status::New, 49), None);
        assert_eq!(moved(Status::New, 50), Some((Status::Qualifying, Rule::AiScoreQualifying)));
        assert_eq!(moved(Status::Contacted, 80), Some((Status::Qualified, Rule::AiScoreQualified)));
        assert_eq!(moved(Status::Qualifying, 79), None);
        assert_eq!(moved(Status::Qualifying, 95), Some((Status::Qualified, Rule::AiScoreQualified)));
        assert_eq!(moved(Status::Qualified, 10), None);
        assert_eq!(moved(Status::FollowUp, 100), None);
        let only_qualifying = StatusRules { qualifying_at: Some(60), ..StatusRules::default() };
        assert_eq!(
            rule_move(&only_qualifying, free(Status::New), Trigger::AiScore(99)).map(|m| m.to),
            Some(Status::Qualifying)
        );
    }

    #[test]
    fn a_follow_up_holds_the_lead_in_follow_up_until_the_last_one_closes() {
        let rules = every_rule();
        let opened = rule_move(&rules, free(Status::Qualified), Trigger::FollowUpOpened).expect("moves");
        assert_eq!((opened.from, opened.to, opened.rule), (Status::Qualified, Status::FollowUp, Rule::FollowUpOpened));
        assert_eq!(rule_move(&rules, free(Status::FollowUp), Trigger::FollowUpOpened), None);
        let closed = |rules: &StatusRules, before| {
            rule_move(rules, free(Status::FollowUp), Trigger::LastFollowUpClosed { before }).map(|m| m.to)
        };
        assert_eq!(closed(&rules, Some(Status::Qualified)), Some(Status::Qualified));
        assert_eq!(closed(&rules, None), Some(Status::Contacted));
        let chosen = StatusRules { after_follow_ups: Some(Status::Qualifying), ..every_rule() };
        assert_eq!(closed(&chosen, Some(Status::Qualified)), Some(Status::Qualifying));
        assert_eq!(rule_move(&rules, free(Status::Qualified), Trigger::LastFollowUpClosed { before: None }), None);
    }

    #[test]
    fn idle_leads_are_archived_and_broadcast_replies_open_as_contacted() {
        let archived = rule_move(&every_rule(), free(Status::Qualifying), Trigger::Idle).expect("moves");
        assert_eq!((archived.to, archived.rule), (Status::Archived, Rule::ArchiveIdle));
        let opened = opening_move(&every_rule(), SourceKind::BroadcastReply).expect("moves");
        assert_eq!((opened.from, opened.to), (Status::New, Status::Contacted));
        assert_eq!(opening_move(&every_rule(), SourceKind::ChatMessage), None);
    }
}
