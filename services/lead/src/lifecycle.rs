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

use contracts::lead::{ScoreSource, Status};

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
}
