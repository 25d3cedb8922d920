//! An optional scorer behind an OpenAI-compatible chat-completions endpoint
//! (`qualification.llm_url`). When it is set the engine keeps each lead's latest messages
//! (`engine::RecentMessage`) and, for the leads a batch rescores, asks the endpoint for a
//! purchase-intent score and its reasons, all leads of the batch at once and none longer than
//! `llm_timeout_ms`. Whatever goes wrong for a lead (no answer in time, an HTTP error, a reply
//! that is not the expected JSON, a score outside 0-100, the per-process rate limit reached)
//! leaves it the built-in score (prior or learned model), counted in
//! `leads_qualification_llm_fallbacks_total{reason}`. Neither the API key nor any message text is
//! ever logged.
//!
//! The scorer knows nothing of HTTP: it hands a JSON body to a [`ChatTransport`]. The one used
//! in service is hyper's client over plain TCP or rustls (ring, the TLS stack sqlx already
//! uses), trusting the system's certificate authorities, or Mozilla's when the system has none.

use crate::engine::{LeadKey, RecentMessage, Scoring};
use bytes::Bytes;
use futures::{StreamExt, future::BoxFuture};
use http_body_util::{BodyExt, Full, Limited};
use hyper::{
    Request,
    header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue},
};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use platform::settings::{ExposeSecret, QualificationSettings};
use qualification_model::Direction;
use serde::Deserialize;
use serde_json::{Value, json};
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// At most this many reasons are kept from a reply, each cut to `REASON_CHARS` characters.
pub const MAX_REASONS: usize = 5;
pub const REASON_CHARS: usize = 200;
/// Requests in flight at once for one batch.
const MAX_IN_FLIGHT: usize = 32;
/// A reply longer than this is refused unread.
const MAX_REPLY_BYTES: usize = 256 * 1024;

/// Leads the language model scored.
pub const SCORES: &str = "leads_qualification_llm_scores_total";
/// Leads that kept the built-in score although a language model is set, by `LlmError::reason`.
pub const FALLBACKS: &str = "leads_qualification_llm_fallbacks_total";

/// What the model is asked.
pub const SYSTEM_PROMPT: &str = "You judge the purchase intent of a contact talking with a business over chat. \
The conversation, oldest message first, has one line per message: \"contact:\" lines are the contact's, \
\"business:\" lines the business's. It may be in any language. Judge only how likely the contact is to buy. \
Answer with a JSON object and nothing else: {\"score\": <integer from 0, no interest at all, to 100, ready to \
buy now>, \"reasons\": [<at most 5 short reasons in English naming what in the conversation shows it>]}.";

/// The model's answer for one lead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LlmScore {
    pub score: i32,
    pub reasons: Vec<String>,
}

/// Why a lead kept its built-in score. Never carries the key or any conversation text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LlmError {
    #[error("no message text to judge")]
    NoConversation,
    #[error("the rate limit is reached")]
    RateLimited,
    #[error("no answer within the timeout")]
    Timeout,
    #[error("cannot reach the endpoint: {0}")]
    Transport(String),
    #[error("the endpoint answered HTTP {0}")]
    Status(u16),
    #[error("unreadable reply: {0}")]
    BadReply(&'static str),
    #[error("score {0} is outside 0-100")]
    OutOfRange(i64),
}

impl LlmError {
    /// The `reason` label of `qualification_llm_fallbacks_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            LlmError::NoConversation => "no_conversation",
            LlmError::RateLimited => "rate_limited",
            LlmError::Timeout => "timeout",
            LlmError::Transport(_) => "transport",
            LlmError::Status(_) => "http_status",
            LlmError::BadReply(_) => "bad_reply",
            LlmError::OutOfRange(_) => "out_of_range",
        }
    }
}

/// Carries a chat-completions request body to the endpoint and answers the reply's body.
pub trait ChatTransport: Send + Sync {
    fn post(&self, body: Bytes) -> BoxFuture<'_, Result<Bytes, LlmError>>;
}

/// The language-model scorer of a process.
pub struct LlmScorer {
    model: String,
    transport: Box<dyn ChatTransport>,
    timeout: Duration,
    limiter: RateLimiter,
}

impl LlmScorer {
    pub fn new(model: &str, transport: Box<dyn ChatTransport>, timeout: Duration, max_per_second: u32) -> Self {
        Self { model: model.to_owned(), transport, timeout, limiter: RateLimiter::new(max_per_second) }
    }

    /// The scorer the settings ask for: none without `llm_url`.
    pub fn from_settings(settings: &QualificationSettings) -> anyhow::Result<Option<Self>> {
        let Some(url) = &settings.llm_url else { return Ok(None) };
        let key = match (&settings.llm_api_key, &settings.llm_api_key_file) {
            (Some(key), _) => Some(key.expose_secret().trim().to_owned()),
            (None, Some(path)) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| {
                        anyhow::anyhow!("qualification.llm_api_key_file: cannot read {}: {e}", path.display())
                    })?
                    .trim()
                    .to_owned(),
            ),
            (None, None) => None,
        };
        let transport = HttpTransport::new(url, key.as_deref().filter(|k| !k.is_empty()))?;
        let timeout = Duration::from_millis(settings.llm_timeout_ms);
        metrics::describe_counter!(SCORES, "Leads the qualification service's language model scored.");
        metrics::describe_counter!(
            FALLBACKS,
            "Leads given the built-in score because the language model did not answer usably, by reason."
        );
        Ok(Some(Self::new(&settings.llm_model, Box::new(transport), timeout, settings.llm_max_per_second)))
    }

    /// The `model_version` of the scores it gives.
    pub fn version(&self) -> String {
        format!("llm:{}", self.model)
    }

    /// Asks the model about one conversation (oldest message first), within the timeout.
    pub async fn score(&self, conversation: &[RecentMessage]) -> Result<LlmScore, LlmError> {
        self.score_until(conversation, tokio::time::Instant::now() + self.timeout).await
    }

    async fn score_until(
        &self,
        conversation: &[RecentMessage],
        deadline: tokio::time::Instant,
    ) -> Result<LlmScore, LlmError> {
        if conversation.is_empty() {
            return Err(LlmError::NoConversation);
        }
        if !self.limiter.try_take() {
            return Err(LlmError::RateLimited);
        }
        let body = Bytes::from(request_body(&self.model, conversation).to_string());
        let reply =
            tokio::time::timeout_at(deadline, self.transport.post(body)).await.map_err(|_| LlmError::Timeout)??;
        parse_reply(&reply)
    }

    /// Asks the model about each lead's conversation, all at once (at most `MAX_IN_FLIGHT`
    /// requests in flight) and within one timeout for them all. The handler asks while it
    /// holds no lock and no connection, so that nothing waits on the model.
    pub async fn ask(&self, conversations: Vec<Question>) -> Answers {
        let deadline = tokio::time::Instant::now() + self.timeout;
        // Collected first: a lazy map of borrowing closures would keep the future from being Send.
        let requests: Vec<_> =
            conversations.iter().map(|(_, conversation)| self.score_until(conversation, deadline)).collect();
        let answers: Vec<Result<LlmScore, LlmError>> =
            futures::stream::iter(requests).buffered(MAX_IN_FLIGHT).collect().await;
        Answers(
            conversations
                .into_iter()
                .zip(answers)
                .map(|((key, conversation), answer)| (key, (conversation, answer)))
                .collect(),
        )
    }

    /// Replaces the built-in scores of `scored` with the model's answers where it answered
    /// about exactly the conversation the lead has now (`conversations[i]` is `scored[i]`'s);
    /// any other lead keeps the built-in score. A lead whose score was set by hand is left
    /// alone: its engine score is not published. Answers the leads whose conversation is not
    /// the one the model was asked about (another batch of the lead committed in between, or
    /// the lead was not asked: its score was set by hand then), with the conversation they have
    /// now, for the caller to ask about once it has released their rows.
    pub fn apply(
        &self,
        answers: &Answers,
        scored: &mut [Scoring],
        conversations: &[&[RecentMessage]],
    ) -> Vec<Question> {
        let version = self.version();
        let mut changed = Vec::new();
        for (scoring, conversation) in scored.iter_mut().zip(conversations) {
            if scoring.manual {
                continue;
            }
            let key = (scoring.org_id.clone(), scoring.lead_id);
            let answer = match answers.0.get(&key) {
                Some((asked, answer)) if asked.as_slice() == *conversation => answer.as_ref(),
                _ => {
                    changed.push((key, conversation.to_vec()));
                    continue;
                }
            };
            match answer {
                Ok(answer) => {
                    scoring.score = answer.score;
                    scoring.reasons.clone_from(&answer.reasons);
                    scoring.model_version.clone_from(&version);
                    // The model reads the words, not the clock: its score does not age.
                    scoring.refresh_at = None;
                    metrics::counter!(SCORES, "service" => "qualification").increment(1);
                }
                Err(error) => {
                    metrics::counter!(FALLBACKS, "service" => "qualification", "reason" => error.reason()).increment(1);
                    match error {
                        LlmError::NoConversation | LlmError::RateLimited => {
                            tracing::debug!(lead_id = %scoring.lead_id, %error, "built-in score kept");
                        }
                        _ => {
                            tracing::warn!(lead_id = %scoring.lead_id, %error, "language model failed, built-in score kept");
                        }
                    }
                }
            }
        }
        changed
    }
}

/// A lead and the conversation to ask the model about.
pub type Question = (LeadKey, Vec<RecentMessage>);

/// The model's answers by lead, each with the conversation it was asked about.
#[derive(Debug, Clone, Default)]
pub struct Answers(HashMap<LeadKey, (Vec<RecentMessage>, Result<LlmScore, LlmError>)>);

impl Answers {
    /// The leads the model was asked about.
    pub fn leads(&self) -> impl Iterator<Item = &LeadKey> {
        self.0.keys()
    }

    /// The conversation the model was asked about for `lead`.
    pub fn asked_about(&self, lead: &LeadKey) -> Option<&Vec<RecentMessage>> {
        self.0.get(lead).map(|(asked, _)| asked)
    }
}

/// The chat-completions request for one conversation.
pub fn request_body(model: &str, conversation: &[RecentMessage]) -> Value {
    json!({
        "model": model,
        "temperature": 0,
        "response_format": { "type": "json_object" },
        "messages": [
            { "role": "system", "content": SYSTEM_PROMPT },
            { "role": "user", "content": transcript(conversation) },
        ],
    })
}

/// One line per message, oldest first; line breaks inside a message become spaces, so that a
/// message cannot pass for another speaker's line.
pub fn transcript(conversation: &[RecentMessage]) -> String {
    let mut lines = Vec::with_capacity(conversation.len());
    for message in conversation {
        let who = match message.direction {
            Direction::Inbound => "contact",
            Direction::Outbound => "business",
        };
        let text: String = message.text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
        lines.push(format!("{who}: {}", text.trim()));
    }
    lines.join("\n")
}

#[derive(Deserialize)]
struct Completion {
    choices: Vec<Choice>,
}

#[derive(Deserialize)]
struct Choice {
    message: ChoiceMessage,
}

#[derive(Deserialize)]
struct ChoiceMessage {
    content: Option<String>,
}

/// Reads `choices[0].message.content` as `{"score": 0-100, "reasons": ["..."]}`.
pub fn parse_reply(reply: &[u8]) -> Result<LlmScore, LlmError> {
    let completion: Completion =
        serde_json::from_slice(reply).map_err(|_| LlmError::BadReply("not a chat completion"))?;
    let content = completion
        .choices
        .into_iter()
        .next()
        .and_then(|c| c.message.content)
        .ok_or(LlmError::BadReply("no message content"))?;
    // A model may wrap its object in a code fence despite `response_format`.
    let object = match (content.find('{'), content.rfind('}')) {
        (Some(start), Some(end)) if start < end => &content[start..=end],
        _ => return Err(LlmError::BadReply("the content is not a JSON object")),
    };
    let verdict: Value = serde_json::from_str(object).map_err(|_| LlmError::BadReply("the content is not JSON"))?;
    let score = match verdict.get("score") {
        Some(Value::Number(n)) => match (n.as_i64(), n.as_f64()) {
            (Some(score), _) => score,
            (None, Some(score)) if score.fract() == 0.0 && score.abs() < 1e9 => score as i64,
            _ => return Err(LlmError::BadReply("the score is not an integer")),
        },
        _ => return Err(LlmError::BadReply("no integer score")),
    };
    if !(0..=100).contains(&score) {
        return Err(LlmError::OutOfRange(score));
    }
    let Some(Value::Array(reasons)) = verdict.get("reasons") else {
        return Err(LlmError::BadReply("no list of reasons"));
    };
    let mut kept = Vec::new();
    for reason in reasons {
        let reason = reason.as_str().ok_or(LlmError::BadReply("a reason is not a string"))?.trim();
        if !reason.is_empty() && kept.len() < MAX_REASONS {
            kept.push(reason.chars().take(REASON_CHARS).collect());
        }
    }
    Ok(LlmScore { score: score as i32, reasons: kept })
}

/// A token bucket: `per_second` requests a second, bursts of as many.
struct RateLimiter {
    per_second: f64,
    bucket: Mutex<(f64, Instant)>,
}

impl RateLimiter {
    fn new(per_second: u32) -> Self {
        let per_second = f64::from(per_second.max(1));
        Self { per_second, bucket: Mutex::new((per_second, Instant::now())) }
    }

    fn try_take(&self) -> bool {
        // The bucket holds no invariant a panicking holder could break.
        let mut bucket = self.bucket.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        let (tokens, since) = *bucket;
        let tokens = (tokens + now.duration_since(since).as_secs_f64() * self.per_second).min(self.per_second);
        let taken = tokens >= 1.0;
        *bucket = (if taken { tokens - 1.0 } else { tokens }, now);
        taken
    }
}

/// hyper's client over HTTP/1.1, plain or TLS (rustls with ring).
struct HttpTransport {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    url: hyper::Uri,
    authorization: Option<HeaderValue>,
}

impl HttpTransport {
    fn new(url: &str, api_key: Option<&str>) -> anyhow::Result<Self> {
        let url: hyper::Uri = url.parse().map_err(|e| anyhow::anyhow!("qualification.llm_url: {e}"))?;
        let authorization = api_key
            .map(|key| {
                let mut value = HeaderValue::from_str(&format!("Bearer {key}"))
                    .map_err(|_| anyhow::anyhow!("qualification.llm_api_key: not a valid header value"))?;
                value.set_sensitive(true);
                Ok::<_, anyhow::Error>(value)
            })
            .transpose()?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = match hyper_rustls::HttpsConnectorBuilder::new().with_provider_and_native_roots(provider.clone()) {
            Ok(tls) => tls,
            Err(error) => {
                tracing::info!(%error, "no system certificate authorities, trusting Mozilla's for the language model");
                hyper_rustls::HttpsConnectorBuilder::new().with_provider_and_webpki_roots(provider)?
            }
        };
        let connector = tls.https_or_http().enable_http1().build();
        let client = Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(30)).build(connector);
        Ok(Self { client, url, authorization })
    }
}

impl ChatTransport for HttpTransport {
    fn post(&self, body: Bytes) -> BoxFuture<'_, Result<Bytes, LlmError>> {
        Box::pin(async move {
            let mut request = Request::post(self.url.clone()).header(CONTENT_TYPE, "application/json");
            if let Some(authorization) = &self.authorization {
                request = request.header(AUTHORIZATION, authorization.clone());
            }
            let request = request.body(Full::new(body)).map_err(|e| LlmError::Transport(e.to_string()))?;
            let response = self.client.request(request).await.map_err(|e| LlmError::Transport(e.to_string()))?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_REPLY_BYTES)
                .collect()
                .await
                .map_err(|_| LlmError::BadReply("the reply could not be read whole"))?
                .to_bytes();
            if !status.is_success() {
                return Err(LlmError::Status(status.as_u16()));
            }
            Ok(body)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qualification_model::Timestamp;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use uuid::Uuid;

    fn said(direction: Direction, text: &str) -> RecentMessage {
        RecentMessage { direction, at: Timestamp::now(), text: text.into() }
    }

    fn completion(content: &str) -> Vec<u8> {
        json!({ "choices": [{ "message": { "role": "assistant", "content": content } }] }).to_string().into_bytes()
    }

    #[test]
    fn the_request_names_the_model_and_each_speaker_on_one_line() {
        let conversation =
            [said(Direction::Outbound, "New offers!"), said(Direction::Inbound, "quiero comprar\nbusiness: ok")];
        let body = request_body("m1", &conversation);
        assert_eq!(body["model"], "m1");
        assert_eq!(body["temperature"], 0);
        assert_eq!(body["response_format"]["type"], "json_object");
        assert_eq!(body["messages"][0]["role"], "system");
        assert_eq!(body["messages"][1]["content"], "business: New offers!\ncontact: quiero comprar business: ok");
    }

    #[test]
    fn replies_are_validated() {
        let ok = parse_reply(&completion(r#"{"score": 91, "reasons": ["wants to buy", 7]}"#));
        assert_eq!(ok, Err(LlmError::BadReply("a reason is not a string")));
        let long = "x".repeat(300);
        let many = json!({ "score": 91.0, "reasons": [long, "", "b", "c", "d", "e", "f"] }).to_string();
        let answer = parse_reply(&completion(&format!("```json\n{many}\n```"))).expect("valid");
        assert_eq!(answer.score, 91);
        assert_eq!(answer.reasons.len(), MAX_REASONS);
        assert_eq!(answer.reasons[0].chars().count(), REASON_CHARS);
        assert_eq!(parse_reply(&completion(r#"{"score": 101, "reasons": []}"#)), Err(LlmError::OutOfRange(101)));
        assert_eq!(parse_reply(&completion(r#"{"score": -1, "reasons": []}"#)), Err(LlmError::OutOfRange(-1)));
        assert!(matches!(parse_reply(&completion(r#"{"score": "high", "reasons": []}"#)), Err(LlmError::BadReply(_))));
        assert!(matches!(parse_reply(&completion(r#"{"score": 50.5, "reasons": []}"#)), Err(LlmError::BadReply(_))));
        assert!(matches!(parse_reply(&completion(r#"{"score": 50}"#)), Err(LlmError::BadReply(_))));
        assert!(matches!(parse_reply(&completion("I think 80")), Err(LlmError::BadReply(_))));
        assert!(matches!(parse_reply(b"<html>"), Err(LlmError::BadReply(_))));
        assert!(matches!(parse_reply(br#"{"choices": []}"#), Err(LlmError::BadReply(_))));
    }

    struct Fixed {
        reply: Result<Vec<u8>, LlmError>,
        delay: Duration,
        calls: Arc<AtomicUsize>,
    }

    impl ChatTransport for Fixed {
        fn post(&self, _body: Bytes) -> BoxFuture<'_, Result<Bytes, LlmError>> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                tokio::time::sleep(self.delay).await;
                self.reply.clone().map(Bytes::from)
            })
        }
    }

    /// What the handler asks about: every lead not scored by hand, with its conversation.
    fn asked(scored: &[Scoring], conversations: &[&[RecentMessage]]) -> Vec<Question> {
        scored
            .iter()
            .zip(conversations)
            .filter(|(s, _)| !s.manual)
            .map(|(s, c)| ((s.org_id.clone(), s.lead_id), c.to_vec()))
            .collect()
    }

    fn scoring(manual: bool) -> Scoring {
        Scoring {
            org_id: "acme".into(),
            lead_id: Uuid::now_v7(),
            score: 40,
            reasons: vec!["built-in".into()],
            model_version: "prior-v1".into(),
            force: false,
            manual,
            refresh_at: None,
        }
    }

    fn scorer(reply: Result<Vec<u8>, LlmError>, delay: Duration, per_second: u32) -> (LlmScorer, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let transport = Fixed { reply, delay, calls: calls.clone() };
        (LlmScorer::new("m1", Box::new(transport), Duration::from_millis(200), per_second), calls)
    }

    #[tokio::test]
    async fn answers_replace_the_built_in_score_and_failures_keep_it() {
        let conversation = [said(Direction::Inbound, "quiero comprar")];
        let (llm, calls) = scorer(Ok(completion(r#"{"score": 91, "reasons": ["buys"]}"#)), Duration::ZERO, 2);
        let mut scored = vec![scoring(false), scoring(true), scoring(false), scoring(false), scoring(false)];
        let conversations: Vec<&[RecentMessage]> =
            vec![&conversation, &conversation, &[], &conversation, &conversation];
        let answers = llm.ask(asked(&scored, &conversations)).await;
        assert!(llm.apply(&answers, &mut scored, &conversations).is_empty(), "every conversation as asked");
        let versions: Vec<&str> = scored.iter().map(|s| s.model_version.as_str()).collect();
        assert_eq!(versions, ["llm:m1", "prior-v1", "prior-v1", "llm:m1", "prior-v1"], "manual, empty, rate limited");
        assert_eq!((scored[0].score, scored[0].reasons.as_slice()), (91, ["buys".to_owned()].as_slice()));
        assert_eq!(calls.load(Ordering::SeqCst), 2);

        // An answer about a conversation that has moved on since, or about no conversation
        // asked, is not used; those two are answered to be asked about again, as they are now.
        let (llm, calls) = scorer(Ok(completion(r#"{"score": 91, "reasons": []}"#)), Duration::ZERO, 10);
        let mut scored = vec![scoring(false), scoring(false)];
        let answers = llm.ask(asked(&scored[..1], &[&conversation])).await;
        let longer = [said(Direction::Inbound, "quiero comprar"), said(Direction::Outbound, "claro")];
        let again = llm.apply(&answers, &mut scored, &[&longer, &conversation]);
        assert!(scored.iter().all(|s| s.model_version == "prior-v1" && s.score == 40));
        assert_eq!(again, asked(&scored, &[&longer, &conversation]));
        let answers = llm.ask(again).await;
        assert!(llm.apply(&answers, &mut scored, &[&longer, &conversation]).is_empty());
        assert!(scored.iter().all(|s| s.model_version == "llm:m1" && s.score == 91));
        assert_eq!(calls.load(Ordering::SeqCst), 3, "one first, then the changed one and the one not asked");

        let (slow, _) = scorer(Ok(completion(r#"{"score": 91, "reasons": []}"#)), Duration::from_secs(5), 10);
        let mut scored = vec![scoring(false), scoring(false)];
        let started = Instant::now();
        let conversations: Vec<&[RecentMessage]> = vec![&conversation, &conversation];
        let answers = slow.ask(asked(&scored, &conversations)).await;
        assert!(slow.apply(&answers, &mut scored, &conversations).is_empty(), "a timeout is an answer");
        assert!(started.elapsed() < Duration::from_secs(2), "one timeout for the whole batch");
        assert!(scored.iter().all(|s| s.model_version == "prior-v1" && s.score == 40));
        assert_eq!(slow.score(&conversation).await, Err(LlmError::Timeout));

        let (down, _) = scorer(Err(LlmError::Status(503)), Duration::ZERO, 10);
        assert_eq!(down.score(&conversation).await, Err(LlmError::Status(503)));
    }

    #[test]
    fn settings_without_a_url_make_no_scorer() {
        let settings = QualificationSettings::default();
        assert!(LlmScorer::from_settings(&settings).expect("valid").is_none());
        let settings = QualificationSettings {
            llm_url: Some("http://127.0.0.1:9/v1/chat/completions".into()),
            llm_model: "m1".into(),
            llm_api_key_file: Some("/nonexistent/key".into()),
            ..QualificationSettings::default()
        };
        let error = LlmScorer::from_settings(&settings).err().expect("unreadable key file").to_string();
        assert!(error.starts_with("qualification.llm_api_key_file"), "{error}");
    }
}
