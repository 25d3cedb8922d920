//! Sessions that end before their tokens expire. The people directory publishes
//! `events.people.<org>.sessions_ended` when a person is deactivated, their password reset or
//! their role changed; every process follows that stream (`follow`) into one record of ended
//! sessions (`ended_sessions`), which every gRPC server of the process verifies tokens against,
//! so that such a person's earlier tokens are refused by every service within a moment.
//!
//! Each process reads every event, so the consumer is an ordered, ephemeral one of its own
//! (no durable, which would share the events out between processes). It starts at
//! `auth.max_token_lifetime_secs` ago: an end older than that concerns only tokens that have
//! expired anyway.

use crate::auth::EndedSessions;
use crate::nats::{StreamKind, Subjects};
use async_nats::jetstream::{
    self, ErrorCode,
    consumer::{DeliverPolicy, pull::Ordered, pull::OrderedConfig},
    context::GetStreamErrorKind,
};
use contracts::{
    Envelope,
    people::{SESSIONS_ENDED, SOURCE, SessionsEnded},
};
use futures::StreamExt;
use std::{
    collections::HashMap,
    sync::{Mutex, OnceLock, PoisonError},
    time::{Duration, SystemTime, UNIX_EPOCH},
};
use tokio_util::sync::CancellationToken;

/// How long `follow` waits at start for the events already in the stream; past it the process
/// serves while the rest is read.
const CATCH_UP: Duration = Duration::from_secs(30);
/// Pauses before following again after the consumer failed: the first, and the longest.
const RETRY_FIRST: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(10);
/// How often a process looks for the people stream before its owner has declared it: the
/// first ends it publishes reach the process at most this late.
const STREAM_POLL: Duration = Duration::from_secs(1);

/// The record of ended sessions this process keeps for the environment under `prefix`
/// (`settings.subject_prefix`), shared by every verifier of the process and fed by `follow`.
/// One per prefix, so that environments sharing a process (tests) keep apart.
pub fn ended_sessions(prefix: &str) -> EndedSessions {
    static BY_PREFIX: OnceLock<Mutex<HashMap<String, EndedSessions>>> = OnceLock::new();
    let mut by_prefix = BY_PREFIX.get_or_init(Mutex::default).lock().unwrap_or_else(PoisonError::into_inner);
    by_prefix.entry(prefix.to_owned()).or_default().clone()
}

/// Follows `EVENTS_PEOPLE` into `ended_sessions(subjects.prefix())` until `token` fires. Returns
/// once the events already in the stream are applied (or after `CATCH_UP`), so that a process
/// starts serving knowing whose sessions ended; the task it hands back goes on following,
/// opening a new consumer whenever one fails. A stream not declared yet has ended no session:
/// the task waits for it. Any other failure to read it at start is an error.
pub async fn follow(
    js: jetstream::Context,
    subjects: Subjects,
    max_token_lifetime: Duration,
    token: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let ended = ended_sessions(subjects.prefix());
    let Some((mut messages, pending)) = open(&js, &subjects, max_token_lifetime).await? else {
        tracing::info!("no people stream yet: following ended sessions once it is declared");
        return Ok(tokio::spawn(async move {
            if let Some(messages) = reopen(&js, &subjects, max_token_lifetime, RETRY_FIRST, &token).await {
                keep_following(js, subjects, max_token_lifetime, messages, ended, token).await;
            }
        }));
    };
    if pending > 0 {
        let caught_up = tokio::time::timeout(CATCH_UP, async {
            while let Some(message) = messages.next().await {
                let message = message?;
                apply(&ended, &message.payload);
                if message.info().is_ok_and(|info| info.pending == 0) {
                    break;
                }
            }
            anyhow::Ok(())
        })
        .await;
        match caught_up {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "reading ended sessions failed at start, following again"),
            Err(_) => tracing::warn!(pending, "ended sessions not all read at start; serving while they are"),
        }
    }
    tracing::info!(pending, "following ended sessions");
    Ok(tokio::spawn(keep_following(js, subjects, max_token_lifetime, messages, ended, token)))
}

async fn keep_following(
    js: jetstream::Context,
    subjects: Subjects,
    since: Duration,
    mut messages: Ordered,
    ended: EndedSessions,
    token: CancellationToken,
) {
    let mut pause = RETRY_FIRST;
    loop {
        tokio::select! {
            () = token.cancelled() => return,
            next = messages.next() => match next {
                Some(Ok(message)) => {
                    apply(&ended, &message.payload);
                    pause = RETRY_FIRST;
                    continue;
                }
                Some(Err(error)) => tracing::warn!(%error, "following ended sessions failed, following again"),
                None => tracing::warn!("the ended sessions consumer stopped, following again"),
            },
        }
        // A new consumer from the start again: ending a session twice changes nothing.
        match reopen(&js, &subjects, since, pause, &token).await {
            Some(again) => messages = again,
            None => return,
        }
        pause = (pause * 2).min(RETRY_MAX);
    }
}

/// A new consumer, tried after `pause` and then at growing pauses until one opens; `None` once
/// `token` fires.
async fn reopen(
    js: &jetstream::Context,
    subjects: &Subjects,
    since: Duration,
    mut pause: Duration,
    token: &CancellationToken,
) -> Option<Ordered> {
    loop {
        tokio::select! {
            () = token.cancelled() => return None,
            () = tokio::time::sleep(pause) => {}
        }
        match open(js, subjects, since).await {
            Ok(Some((messages, _))) => return Some(messages),
            Ok(None) => pause = STREAM_POLL,
            Err(error) => {
                tracing::warn!(%error, "cannot follow ended sessions, retrying");
                pause = (pause * 2).min(RETRY_MAX);
            }
        }
    }
}

/// An ordered consumer of `EVENTS_PEOPLE` from `since` ago, and how many messages it has to
/// deliver already; `None` when the stream is not declared.
async fn open(js: &jetstream::Context, subjects: &Subjects, since: Duration) -> anyhow::Result<Option<(Ordered, u64)>> {
    let name = subjects.stream_name(StreamKind::Events(SOURCE));
    let stream = match js.get_stream(&name).await {
        Ok(stream) => stream,
        Err(error) => match error.kind() {
            GetStreamErrorKind::JetStream(error) if error.error_code() == ErrorCode::STREAM_NOT_FOUND => {
                return Ok(None);
            }
            _ => anyhow::bail!("stream {name}: {error}"),
        },
    };
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?;
    let start = now.saturating_sub(since);
    let start_time = DeliverPolicy::ByStartTime {
        start_time: async_nats::datetime::from_nanos(i128::try_from(start.as_nanos())?)
            .map_err(|e| anyhow::anyhow!("{e}"))?,
    };
    let config = OrderedConfig {
        name: Some(format!("sessions-{}", uuid::Uuid::new_v4().simple())),
        deliver_policy: start_time,
        ..Default::default()
    };
    let consumer =
        stream.create_consumer(config).await.map_err(|e| anyhow::anyhow!("ordered consumer of {name}: {e}"))?;
    let pending = consumer.cached_info().num_pending;
    let messages = consumer.messages().await.map_err(|e| anyhow::anyhow!("ordered consumer of {name}: {e}"))?;
    Ok(Some((messages, pending)))
}

/// Ends the sessions one event names; an event that does not read, or of another kind, is
/// logged and skipped (a reader of an older version meeting a newer kind).
pub fn apply(ended: &EndedSessions, payload: &[u8]) {
    let event = match Envelope::<SessionsEnded>::from_json(payload) {
        Ok(event) if event.kind == SESSIONS_ENDED => event,
        Ok(event) => {
            tracing::debug!(kind = %event.kind, "people event skipped");
            return;
        }
        Err(error) => {
            tracing::warn!(%error, "unreadable people event skipped");
            return;
        }
    };
    let data = event.data;
    if data.sub.is_empty() || data.org_id != event.org_id {
        tracing::warn!(event_id = %event.id, "people event without a subject or with another organisation skipped");
        return;
    }
    ended.end(&data.sub, &data.org_id, data.ended_at);
    tracing::info!(
        event_id = %event.id,
        org_id = %data.org_id,
        sub = %contracts::values::mask::mask_email(&data.sub),
        ended_at = data.ended_at,
        reason = %data.reason,
        "sessions ended"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Claims, Role};

    fn claims(sub: &str, org: &str, role: Role, iat: u64) -> Claims {
        Claims {
            sub: sub.into(),
            orgs: vec![org.into()],
            role,
            exp: iat + 3600,
            iat: Some(iat),
            agent_id: (role == Role::Agent).then(|| "ann".to_owned()),
        }
    }

    #[test]
    fn an_event_ends_the_sessions_of_its_person_in_its_organisation_only() {
        let ended = EndedSessions::default();
        let event = |org: &str, kind: &str, at: u64| {
            let data = SessionsEnded {
                org_id: org.into(),
                sub: "ann@acme.test".into(),
                ended_at: at,
                reason: "deactivated".into(),
            };
            Envelope::new(org, kind, contracts::people::person_id(org, "ann@acme.test"), 2, data).to_json()
        };
        apply(&ended, &event("acme", "something_else", 1000));
        apply(&ended, b"not json");
        assert!(!ended.has_ended(&claims("ann@acme.test", "acme", Role::Agent, 900)));
        apply(&ended, &event("acme", SESSIONS_ENDED, 1000));
        assert!(ended.has_ended(&claims("ann@acme.test", "acme", Role::Agent, 900)));
        assert!(ended.has_ended(&claims("ann@acme.test", "acme", Role::Operator, 1000)), "issued in the same second");
        assert!(!ended.has_ended(&claims("ann@acme.test", "acme", Role::Agent, 1001)), "signed in again after");
        assert!(!ended.has_ended(&claims("ann@acme.test", "globex", Role::Agent, 900)), "another organisation's");
        assert!(!ended.has_ended(&claims("bob@acme.test", "acme", Role::Agent, 900)), "another person's");
        // An older end read later (a replay) does not move the end back.
        apply(&ended, &event("acme", SESSIONS_ENDED, 500));
        assert!(ended.has_ended(&claims("ann@acme.test", "acme", Role::Agent, 900)));
    }

    #[test]
    fn each_environment_has_its_own_record() {
        let one = ended_sessions("t-sessions-1.");
        let again = ended_sessions("t-sessions-1.");
        let other = ended_sessions("t-sessions-2.");
        one.end("ann@acme.test", "acme", 1000);
        assert!(again.has_ended(&claims("ann@acme.test", "acme", Role::Admin, 1000)));
        assert!(!other.has_ended(&claims("ann@acme.test", "acme", Role::Admin, 1000)));
    }
}
