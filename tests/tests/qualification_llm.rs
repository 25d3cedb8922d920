//! Qualification through a language model: with `qualification.llm_url` set, leads are scored
//! by an OpenAI-compatible chat-completions endpoint (here a small HTTP/1.1 server of the
//! test's own) from their latest messages, with its reasons; when it answers garbage, does not
//! answer in time or the rate limit is reached, the built-in scorer's score stands. No lead's
//! row is locked while the model is asked.

use leads_proto::v1::{
    lead_service_client::LeadServiceClient, qualification_service_client::QualificationServiceClient,
};
use leads_tests::{TestEnv, chat_event, eventually, pb, phone};
use platform::ServiceName;
use serde_json::{Value, json};
use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};
use tonic::transport::Channel;

const DEADLINE: Duration = Duration::from_secs(60);
const ORG: &str = "acme";
const MODEL: &str = "test-model";
const KEY: &str = "sk-test-0123";
const LLM_VERSION: &str = "llm:test-model";

type Leads = LeadServiceClient<Channel>;
type Qualification = QualificationServiceClient<Channel>;

/// How the fake endpoint answers.
const SCORE: u8 = 0;
const GARBAGE: u8 = 1;
const SILENT: u8 = 2;

/// An OpenAI-compatible chat-completions endpoint: checks the key, the model and the request's
/// shape, and scores 91 a conversation that says "comprar", 12 any other.
struct FakeLlm {
    mode: AtomicU8,
    /// While set, each request waits, once recorded, for a permit of `gate` before its answer.
    holding: AtomicBool,
    gate: Semaphore,
    /// Requests that waited at the gate, answered or not.
    held: AtomicUsize,
    /// Requests that were not what the service must send.
    refused: AtomicUsize,
    /// The user message of every request.
    transcripts: Mutex<Vec<String>>,
}

impl Default for FakeLlm {
    fn default() -> Self {
        Self {
            mode: AtomicU8::new(SCORE),
            holding: AtomicBool::new(false),
            gate: Semaphore::new(0),
            held: AtomicUsize::new(0),
            refused: AtomicUsize::new(0),
            transcripts: Mutex::default(),
        }
    }
}

impl FakeLlm {
    async fn start() -> anyhow::Result<(Arc<Self>, String)> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/v1/chat/completions", listener.local_addr()?);
        let llm = Arc::new(Self::default());
        let serving = llm.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serving.clone().connection(stream));
            }
        });
        Ok((llm, url))
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }

    /// Makes the requests that follow wait for `release`, or not.
    fn hold(&self, holding: bool) {
        self.holding.store(holding, Ordering::SeqCst);
    }

    /// Lets one held request have its answer.
    fn release(&self) {
        self.gate.add_permits(1);
    }

    /// Waits until `count` requests have been held.
    async fn held(&self, count: usize, what: &str) {
        eventually(DEADLINE, what, || async { (self.held.load(Ordering::SeqCst) >= count).then_some(()) }).await;
    }

    /// Answers the requests of one (kept-alive) connection in turn.
    async fn connection(self: Arc<Self>, stream: TcpStream) {
        let mut stream = BufReader::new(stream);
        loop {
            let (mut request_line, mut length, mut authorization) = (String::new(), 0, None);
            loop {
                let mut line = String::new();
                if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
                    return;
                }
                if line == "\r\n" {
                    break;
                }
                if request_line.is_empty() {
                    request_line = line;
                } else if let Some((name, value)) = line.split_once(':') {
                    match name.trim().to_ascii_lowercase().as_str() {
                        "content-length" => length = value.trim().parse().unwrap_or(0),
                        "authorization" => authorization = Some(value.trim().to_owned()),
                        _ => {}
                    }
                }
            }
            let mut body = vec![0; length];
            if stream.read_exact(&mut body).await.is_err() {
                return;
            }
            if self.mode.load(Ordering::SeqCst) == SILENT {
                // No answer: wait until the client gives up and closes the connection.
                let _ = stream.read(&mut [0; 1]).await;
                return;
            }
            let (status, reply) = self.answer(&request_line, authorization.as_deref(), &body);
            if self.holding.load(Ordering::SeqCst) {
                self.held.fetch_add(1, Ordering::SeqCst);
                match self.gate.acquire().await {
                    Ok(permit) => permit.forget(),
                    Err(_) => return,
                }
            }
            let response = format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{reply}",
                reply.len()
            );
            if stream.get_mut().write_all(response.as_bytes()).await.is_err() {
                return;
            }
        }
    }

    fn answer(&self, request_line: &str, authorization: Option<&str>, body: &[u8]) -> (&'static str, String) {
        let expected_auth = format!("Bearer {KEY}");
        if !request_line.starts_with("POST /v1/chat/completions ") || authorization != Some(expected_auth.as_str()) {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return ("401 Unauthorized", r#"{"error": "unauthorized"}"#.into());
        }
        let request: Value = serde_json::from_slice(body).unwrap_or_default();
        let transcript = request["messages"][1]["content"].as_str().unwrap_or_default().to_owned();
        let well_formed = request["model"] == MODEL
            && request["temperature"] == 0
            && request["response_format"]["type"] == "json_object"
            && request["messages"][0]["role"] == "system"
            && request["messages"][0]["content"].as_str().is_some_and(|s| s.contains("\"score\""))
            && request["messages"][1]["role"] == "user"
            && transcript.lines().all(|l| l.starts_with("contact: ") || l.starts_with("business: "));
        if !well_formed {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return ("400 Bad Request", r#"{"error": "bad request"}"#.into());
        }
        self.transcripts.lock().unwrap().push(transcript.clone());
        let content = match self.mode.load(Ordering::SeqCst) {
            GARBAGE => "I would say this lead looks promising".to_owned(),
            _ if transcript.contains("comprar") => {
                json!({ "score": 91, "reasons": ["asks to buy", "wants it today"] }).to_string()
            }
            _ => json!({ "score": 12, "reasons": ["no sign of wanting to buy"] }).to_string(),
        };
        let completion = json!({
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "model": MODEL,
            "choices": [{ "index": 0, "finish_reason": "stop",
                          "message": { "role": "assistant", "content": content } }],
        });
        ("200 OK", completion.to_string())
    }
}

async fn lead_id(leads: &Leads, phone: &str) -> String {
    eventually(DEADLINE, "the lead", || async {
        let mut leads = leads.clone();
        let all = leads_tests::all_leads(&mut leads, ORG).await.ok()?;
        all.into_iter().find(|l| l.contact.as_ref().is_some_and(|c| c.phone == phone)).map(|l| l.id)
    })
    .await
}

async fn qualification(client: &Qualification, lead_id: &str) -> Option<pb::Qualification> {
    let request = pb::GetQualificationRequest { org_id: ORG.into(), lead_id: lead_id.into() };
    client.clone().get_qualification(request).await.ok().map(tonic::Response::into_inner)
}

/// Waits for the lead's qualification to satisfy `check`.
async fn qualified(
    client: &Qualification,
    lead_id: &str,
    what: &str,
    check: impl Fn(&pb::Qualification) -> bool,
) -> pb::Qualification {
    eventually(DEADLINE, what, || async { qualification(client, lead_id).await.filter(|q| check(q)) }).await
}

async fn requalify(client: &Qualification, lead_id: &str) -> anyhow::Result<pb::Qualification> {
    let request = pb::RequalifyRequest { org_id: ORG.into(), lead_id: lead_id.into() };
    Ok(client.clone().requalify(request).await?.into_inner())
}

/// Scored by the built-in prior, with its reasons: each factor with its signed points.
fn built_in(q: &pb::Qualification) -> bool {
    q.model_version == "prior-v1"
        && !q.reasons.is_empty()
        && q.reasons.iter().all(|r| r.rsplit_once(' ').is_some_and(|(_, p)| p.parse::<i32>().is_ok()))
}

#[tokio::test]
async fn the_language_model_scores_with_its_reasons_and_the_built_in_scorer_stands_in_when_it_fails()
-> anyhow::Result<()> {
    let (llm, url) = FakeLlm::start().await?;
    let key_file = std::env::temp_dir().join(format!("llm-key-{}", uuid::Uuid::new_v4()));
    std::fs::write(&key_file, format!("{KEY}\n"))?;
    let mut env = TestEnv::new().await?;
    let q = &mut env.settings.qualification;
    q.llm_url = Some(url);
    q.llm_model = MODEL.into();
    q.llm_api_key_file = Some(key_file.clone());
    q.llm_timeout_ms = 1500;
    q.llm_max_per_second = 1000;
    env.settings.validate()?;
    let node = env.start(&[ServiceName::Ingest, ServiceName::Lead, ServiceName::Qualification]).await?;
    let leads = node.lead().await?;
    let client: Qualification = QualificationServiceClient::new(node.channel(ServiceName::Qualification).await?);

    // The model's score and reasons, on the qualification and on the lead.
    env.publish_interaction(ORG, &chat_event("k-0", &phone(1), "Hola, quiero comprar el plan hoy")).await?;
    env.publish_interaction(ORG, &chat_event("c-0", &phone(2), "hello, just looking around")).await?;
    let keen = lead_id(&leads, &phone(1)).await;
    let idle = lead_id(&leads, &phone(2)).await;
    let q = qualified(&client, &keen, "the keen lead scored by the model", |q| q.model_version == LLM_VERSION).await;
    assert_eq!((q.score, q.source()), (91, pb::ScoreSource::Ai));
    assert_eq!(q.reasons, ["asks to buy", "wants it today"]);
    let q = qualified(&client, &idle, "the idle lead scored by the model", |q| q.model_version == LLM_VERSION).await;
    assert_eq!((q.score, q.reasons.as_slice()), (12, ["no sign of wanting to buy".to_owned()].as_slice()));
    eventually(DEADLINE, "the model's score on the lead", || async {
        let mut leads = leads.clone();
        let all = leads_tests::all_leads(&mut leads, ORG).await.ok()?;
        all.into_iter().find(|l| l.id == keen && l.score == Some(91)).map(|_| ())
    })
    .await;

    // Garbage from the model: the built-in score and its own reasons.
    llm.set(GARBAGE);
    env.publish_interaction(ORG, &chat_event("k-1", &phone(1), "¿cuánto cuesta?")).await?;
    let q = qualified(&client, &keen, "the built-in score after garbage", |q| q.model_version == "prior-v1").await;
    assert!(built_in(&q), "{q:?}");
    assert!(q.reasons.iter().any(|r| r.starts_with("intent")), "{:?}", q.reasons);

    // Requalify asks the model again, about the whole conversation, oldest message first.
    llm.set(SCORE);
    let q = requalify(&client, &keen).await?;
    assert_eq!((q.model_version.as_str(), q.score), (LLM_VERSION, 91));
    let transcripts = llm.transcripts.lock().unwrap().clone();
    assert_eq!(
        transcripts.last().map(String::as_str),
        Some("contact: Hola, quiero comprar el plan hoy\ncontact: ¿cuánto cuesta?")
    );

    // No answer within the timeout: the built-in score, from the consumer and from Requalify.
    llm.set(SILENT);
    env.publish_interaction(ORG, &chat_event("c-1", &phone(2), "ok thanks")).await?;
    let q = qualified(&client, &idle, "the built-in score after the timeout", |q| q.model_version == "prior-v1").await;
    assert!(built_in(&q), "{q:?}");
    let started = Instant::now();
    let q = requalify(&client, &keen).await?;
    assert!(built_in(&q), "{q:?}");
    assert!(started.elapsed() < Duration::from_secs(10), "waited {:?}", started.elapsed());

    assert_eq!(llm.refused.load(Ordering::SeqCst), 0, "every request had the key, the model and the right shape");
    node.stop().await?;
    std::fs::remove_file(key_file)?;
    env.cleanup().await
}

/// An environment whose qualification service asks the fake model at `url` with `KEY`.
async fn env_asking(url: String) -> anyhow::Result<TestEnv> {
    let mut env = TestEnv::new().await?;
    let q = &mut env.settings.qualification;
    q.llm_url = Some(url);
    q.llm_model = MODEL.into();
    q.llm_api_key = Some(KEY.into());
    Ok(env)
}

#[tokio::test]
async fn beyond_the_rate_limit_leads_get_the_built_in_score() -> anyhow::Result<()> {
    let (llm, url) = FakeLlm::start().await?;
    let mut env = env_asking(url).await?;
    env.settings.qualification.llm_max_per_second = 1;
    env.settings.validate()?;
    let node = env.start(&[ServiceName::Ingest, ServiceName::Lead, ServiceName::Qualification]).await?;
    let leads = node.lead().await?;
    let client: Qualification = QualificationServiceClient::new(node.channel(ServiceName::Qualification).await?);
    const LEADS: u32 = 8;
    for n in 0..LEADS {
        env.publish_interaction(ORG, &chat_event(&format!("r-{n}"), &phone(n), "quiero comprar hoy")).await?;
    }
    let mut versions = Vec::new();
    for n in 0..LEADS {
        let id = lead_id(&leads, &phone(n)).await;
        let q = qualified(&client, &id, "every lead scored", |_| true).await;
        if q.model_version == LLM_VERSION {
            assert_eq!(q.score, 91);
        } else {
            assert!(built_in(&q), "{q:?}");
        }
        versions.push(q.model_version);
    }
    let by_llm = versions.iter().filter(|v| *v == LLM_VERSION).count();
    assert!(by_llm >= 1, "the first request is within the limit: {versions:?}");
    assert!(by_llm < LEADS as usize, "one request a second: {versions:?}");
    assert!(llm.transcripts.lock().unwrap().len() < LEADS as usize, "no request beyond the limit");
    assert_eq!(llm.refused.load(Ordering::SeqCst), 0);
    node.stop().await?;
    env.cleanup().await
}

/// A conversation that another batch changes between the model's answer and the lock gets the
/// built-in score in its batch's transaction; the model is asked about it again only once that
/// has committed (no row waits on the model), and its answer, about the conversation as it now
/// is, replaces the built-in score. One question per batch, plus that one.
#[tokio::test]
async fn a_conversation_changed_while_the_model_answered_is_asked_about_again_after_the_commit() -> anyhow::Result<()> {
    let (llm, url) = FakeLlm::start().await?;
    let mut env = env_asking(url).await?;
    let q = &mut env.settings.qualification;
    q.llm_timeout_ms = 30_000;
    q.llm_max_per_second = 1000;
    env.settings.consumer.concurrency = 4;
    env.settings.validate()?;
    let node = env.start(&[ServiceName::Ingest, ServiceName::Lead, ServiceName::Qualification]).await?;
    let leads = node.lead().await?;
    let client: Qualification = QualificationServiceClient::new(node.channel(ServiceName::Qualification).await?);
    let admin = env.admin_pool().await?;

    env.publish_interaction(ORG, &chat_event("w-0", &phone(1), "hello, just looking around")).await?;
    let lead = lead_id(&leads, &phone(1)).await;
    qualified(&client, &lead, "the first message scored by the model", |q| q.model_version == LLM_VERSION).await;

    // Batch A's question waits at the model while batch B, on the same lead, is asked and committed.
    llm.hold(true);
    env.publish_interaction(ORG, &chat_event("w-1", &phone(1), "quiero comprar hoy")).await?;
    llm.held(1, "batch A's question at the model").await;
    llm.hold(false);
    env.publish_interaction(ORG, &chat_event("w-2", &phone(1), "ok thanks")).await?;
    let conversation = "SELECT f.recent_messages->-1->>'text' FROM qualification.lead_features f \
                        WHERE f.org_id = $1 AND f.lead_id = $2::uuid";
    eventually(DEADLINE, "batch B's conversation committed", || async {
        let last: Option<String> =
            sqlx::query_scalar(conversation).bind(ORG).bind(&lead).fetch_optional(&admin).await.ok()??;
        (last.as_deref() == Some("ok thanks")).then_some(())
    })
    .await;
    let q = qualification(&client, &lead).await.expect("scored");
    assert_eq!((q.model_version.as_str(), q.score), (LLM_VERSION, 12), "batch B's score");

    // A's answer is about a conversation that has changed since: A commits the built-in score
    // and asks again, with the lead's row no longer locked.
    llm.hold(true);
    llm.release();
    llm.held(2, "the question asked again").await;
    let q = qualification(&client, &lead).await.expect("scored");
    assert!(built_in(&q), "batch A committed the built-in score before asking again: {q:?}");
    let unlocked: Result<Option<i64>, _> = sqlx::query_scalar(
        "SELECT lead_version FROM qualification.lead_state WHERE org_id = $1 AND lead_id = $2::uuid FOR UPDATE NOWAIT",
    )
    .bind(ORG)
    .bind(&lead)
    .fetch_optional(&admin)
    .await;
    assert!(matches!(unlocked, Ok(Some(_))), "the lead's row is not locked while the model is asked: {unlocked:?}");
    llm.hold(false);
    llm.release();

    let q = qualified(&client, &lead, "the answer about the changed conversation", |q| {
        q.model_version == LLM_VERSION && q.score == 91
    })
    .await;
    assert_eq!(q.reasons, ["asks to buy", "wants it today"]);
    let transcripts = llm.transcripts.lock().unwrap().clone();
    assert_eq!(
        transcripts,
        [
            "contact: hello, just looking around",
            "contact: hello, just looking around\ncontact: quiero comprar hoy",
            "contact: hello, just looking around\ncontact: ok thanks",
            "contact: hello, just looking around\ncontact: quiero comprar hoy\ncontact: ok thanks",
        ],
        "one question per batch, and one asked again"
    );
    assert_eq!(llm.refused.load(Ordering::SeqCst), 0);
    admin.close().await;
    node.stop().await?;
    env.cleanup().await
}
