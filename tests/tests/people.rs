//! The people directory against real services: admins add people, who set a password with a
//! one-time code and sign in for a token of their organisation and role; wrong passwords and
//! unknown emails look alike, repeated failures lock the account, and deactivating a person,
//! resetting their password or changing their role ends their sessions in every service.

use leads_proto::v1::{
    assignment_service_client::AssignmentServiceClient, lead_service_client::LeadServiceClient,
    people_service_client::PeopleServiceClient,
};
use leads_tests::{Node, Process, TestEnv, eventually_ok, keys::Keys, pb};
use platform::{
    ServiceName, Settings,
    auth::{Role, Signer},
    nats::StreamKind,
};
use std::{path::PathBuf, time::Duration};
use tonic::{Code, Request, Status, transport::Channel};

const ORG: &str = "acme";
const OTHER: &str = "globex";
const ADMIN: &str = "boss@acme.test";
const PASSWORD: &str = "correct horse battery staple";
/// How long every service may take to learn that a session ended.
const MOMENT: Duration = Duration::from_secs(10);

fn with<T>(token: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

/// The lead, assignment and people services of one environment whose tokens are signed and
/// verified with a key of its own.
struct Desk {
    env: TestEnv,
    nodes: Vec<Node>,
    keys: Keys,
    people: PeopleServiceClient<Channel>,
    lead: LeadServiceClient<Channel>,
    assignment: AssignmentServiceClient<Channel>,
}

impl Desk {
    async fn start(tune: impl FnOnce(&mut Settings)) -> anyhow::Result<Self> {
        let (env, keys) = Self::env(tune).await?;
        let node = env.start(&[ServiceName::Lead, ServiceName::Assignment, ServiceName::People]).await?;
        Self::on(env, keys, vec![node], |_| 0).await
    }

    /// Lead and assignment started before the people service has ever run: its stream does not
    /// exist yet when they start.
    async fn start_before_people() -> anyhow::Result<Self> {
        let (env, keys) = Self::env(|_| {}).await?;
        env.js.delete_stream(env.subjects.stream_name(StreamKind::Events("people"))).await?;
        let desk = env.start(&[ServiceName::Lead, ServiceName::Assignment]).await?;
        let people = env.start(&[ServiceName::People]).await?;
        Self::on(env, keys, vec![desk, people], |service| usize::from(service == ServiceName::People)).await
    }

    async fn env(tune: impl FnOnce(&mut Settings)) -> anyhow::Result<(TestEnv, Keys)> {
        let keys = Keys::new();
        let mut env = TestEnv::new().await?;
        env.settings.auth.signing_key_file = Some(keys.key.clone());
        tune(&mut env.settings);
        env.settings.validate()?;
        Ok((env, keys))
    }

    /// Clients of each service at the node `runs` says runs it.
    async fn on(env: TestEnv, keys: Keys, nodes: Vec<Node>, runs: fn(ServiceName) -> usize) -> anyhow::Result<Self> {
        let runs = |service| &nodes[runs(service)];
        let people = PeopleServiceClient::new(runs(ServiceName::People).channel(ServiceName::People).await?);
        let lead = runs(ServiceName::Lead).lead().await?;
        let assignment = runs(ServiceName::Assignment).assignment().await?;
        Ok(Self { env, nodes, keys, people, lead, assignment })
    }

    /// A hand-made token, as `leads token` makes them.
    fn token(&self, sub: &str, role: Role, org: &str) -> String {
        let ttl = Duration::from_secs(self.env.settings.auth.max_token_lifetime_secs.min(3600));
        let agent = (role == Role::Agent).then(|| "ann".to_owned());
        Signer::with_settings(&self.keys.key, &self.env.settings.auth)
            .unwrap()
            .mint_for(sub, role, vec![org.to_owned()], agent, ttl)
            .unwrap()
    }

    fn admin(&self) -> String {
        self.token(ADMIN, Role::Admin, ORG)
    }

    async fn add(&self, org: &str, email: &str, role: pb::PersonRole) -> Result<pb::AddPersonResponse, Status> {
        let agent_id = if role == pb::PersonRole::Agent { "ann" } else { "" };
        let request = pb::AddPersonRequest {
            org_id: org.into(),
            email: email.into(),
            name: "Ann Smith".into(),
            role: role as i32,
            agent_id: agent_id.into(),
        };
        let admin = self.token(ADMIN, Role::Admin, org);
        Ok(self.people.clone().add_person(with(&admin, request)).await?.into_inner())
    }

    async fn set_password(&self, code: &str, password: &str) -> Result<pb::SetPasswordResponse, Status> {
        let request = pb::SetPasswordRequest { setup_code: code.into(), password: password.into() };
        Ok(self.people.clone().set_password(request).await?.into_inner())
    }

    async fn sign_in(&self, org: &str, email: &str, password: &str) -> Result<pb::SignInResponse, Status> {
        let request = pb::SignInRequest { org_id: org.into(), email: email.into(), password: password.into() };
        Ok(self.people.clone().sign_in(request).await?.into_inner())
    }

    /// Adds a person of `ORG` with `PASSWORD` and signs them in.
    async fn signed_in(&self, email: &str, role: pb::PersonRole) -> anyhow::Result<pb::SignInResponse> {
        let added = self.add(ORG, email, role).await?;
        self.set_password(&added.setup_code, PASSWORD).await?;
        Ok(self.sign_in(ORG, email, PASSWORD).await?)
    }

    async fn list_leads(&self, token: &str, org: &str) -> Result<(), Status> {
        let request = pb::ListLeadsRequest { org_id: org.into(), ..Default::default() };
        self.lead.clone().list_leads(with(token, request)).await.map(|_| ())
    }

    async fn list_agents(&self, token: &str) -> Result<(), Status> {
        let request = pb::ListAgentsRequest { org_id: ORG.into(), ..Default::default() };
        self.assignment.clone().list_agents(with(token, request)).await.map(|_| ())
    }

    async fn people(&self) -> anyhow::Result<Vec<pb::Person>> {
        let request = pb::ListPeopleRequest { org_id: ORG.into() };
        Ok(self.people.clone().list_people(with(&self.admin(), request)).await?.into_inner().people)
    }

    /// The audit's actions about `email`, oldest first, with who did each.
    async fn audit(&self, email: &str) -> anyhow::Result<Vec<(String, String)>> {
        let admin = self.env.admin_pool().await?;
        let rows =
            sqlx::query_as("SELECT action, actor FROM people.audit WHERE org_id = $1 AND email = $2 ORDER BY id")
                .bind(ORG)
                .bind(email)
                .fetch_all(&admin)
                .await?;
        admin.close().await;
        Ok(rows)
    }

    async fn stop(self) -> anyhow::Result<()> {
        for node in self.nodes {
            node.stop().await?;
        }
        self.env.cleanup().await
    }
}

fn refused(result: Result<impl std::fmt::Debug, Status>, code: Code, says: &str) {
    let status = result.expect_err("refused");
    assert_eq!(status.code(), code, "{status:?}");
    assert!(status.message().contains(says), "{status:?} should say {says:?}");
}

/// Polls until the services refuse `token` because its session ended, on every service asked.
async fn session_ends(desk: &Desk, token: &str) {
    eventually_ok(MOMENT, "the lead service to refuse the ended session", || async {
        match desk.list_leads(token, ORG).await {
            Err(status) if status.code() == Code::Unauthenticated => Ok(status),
            other => Err(other),
        }
    })
    .await;
    refused(desk.list_leads(token, ORG).await, Code::Unauthenticated, "the session has ended: sign in again");
    eventually_ok(MOMENT, "the assignment service to refuse the ended session", || async {
        match desk.list_agents(token).await {
            Err(status) if status.message().contains("the session has ended") => Ok(()),
            other => Err(other),
        }
    })
    .await;
}

/// The claims of a token, read without checking it (the services check it).
fn claims(token: &str) -> serde_json::Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).expect("a JWT");
    serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

#[tokio::test]
async fn a_person_sets_a_password_once_and_signs_in_to_their_own_organisation_only() -> anyhow::Result<()> {
    let desk = Desk::start(|_| {}).await?;
    let ann = "ann@acme.test";
    let added = desk.add(ORG, "Ann@Acme.Test", pb::PersonRole::Operator).await?;
    let person = added.person.clone().expect("person");
    assert_eq!((person.email.as_str(), person.active, person.has_password), (ann, true, false));
    assert_eq!(added.setup_code.len(), 43);
    refused(desk.add(ORG, ann, pb::PersonRole::Agent).await, Code::AlreadyExists, "already");
    refused(desk.sign_in(ORG, ann, PASSWORD).await, Code::Unauthenticated, "wrong email or password");

    // A password that breaks the rules leaves the code usable; a used code is spent.
    refused(desk.set_password(&added.setup_code, "too short").await, Code::InvalidArgument, "at least 12");
    refused(desk.set_password(&added.setup_code, &" ".repeat(20)).await, Code::InvalidArgument, "whitespace");
    let set = desk.set_password(&added.setup_code, PASSWORD).await?;
    assert_eq!((set.org_id.as_str(), set.email.as_str()), (ORG, ann));
    refused(desk.set_password(&added.setup_code, "another fine password").await, Code::Unauthenticated, "not valid");
    refused(desk.set_password("made-up", PASSWORD).await, Code::Unauthenticated, "not valid");

    let session = desk.sign_in(ORG, " ANN@acme.test", PASSWORD).await?;
    let signed_in = session.person.clone().expect("person");
    assert!(signed_in.has_password && signed_in.last_sign_in_at.is_some());
    let issued = claims(&session.token);
    assert_eq!((issued["sub"].as_str(), issued["role"].as_str()), (Some(ann), Some("operator")));
    assert_eq!(issued["orgs"], serde_json::json!([ORG]));
    let lifetime = issued["exp"].as_i64().unwrap() - issued["iat"].as_i64().unwrap();
    assert_eq!(lifetime, 8 * 3600, "people.session_ttl_secs by default");
    assert_eq!(session.expires_at.as_ref().map(|t| t.seconds), issued["exp"].as_i64());

    desk.list_leads(&session.token, ORG).await?;
    refused(desk.list_leads(&session.token, OTHER).await, Code::PermissionDenied, "organisation");

    // Wrong password and unknown email: the same answer.
    let wrong = desk.sign_in(ORG, ann, "not the password at all").await.expect_err("wrong password");
    let unknown = desk.sign_in(ORG, "nobody@acme.test", PASSWORD).await.expect_err("unknown email");
    let elsewhere = desk.sign_in(OTHER, ann, PASSWORD).await.expect_err("another organisation's account");
    for status in [&wrong, &unknown, &elsewhere] {
        assert_eq!((status.code(), status.message()), (Code::Unauthenticated, "wrong email or password"));
    }

    // The same email in another organisation is another account, with its own password.
    let theirs = desk.add(OTHER, ann, pb::PersonRole::Admin).await?;
    desk.set_password(&theirs.setup_code, "globex has its own password").await?;
    refused(desk.sign_in(OTHER, ann, PASSWORD).await, Code::Unauthenticated, "wrong email or password");
    let other_session = desk.sign_in(OTHER, ann, "globex has its own password").await?;
    assert_eq!(claims(&other_session.token)["role"], "admin");
    assert_eq!(desk.people().await?.len(), 1, "acme's admin sees acme's people only");

    // People are managed by their organisation's admins only.
    let request = || pb::AddPersonRequest {
        org_id: ORG.into(),
        email: "eve@acme.test".into(),
        role: pb::PersonRole::Admin as i32,
        ..Default::default()
    };
    let mut people = desk.people.clone();
    refused(people.add_person(with(&session.token, request())).await, Code::PermissionDenied, "admin");
    let agent = desk.token("agent@acme.test", Role::Agent, ORG);
    refused(people.add_person(with(&agent, request())).await, Code::PermissionDenied, "admin");
    refused(people.add_person(with(&other_session.token, request())).await, Code::PermissionDenied, "organisation");
    refused(people.add_person(request()).await, Code::Unauthenticated, "bearer token");

    assert_eq!(
        desk.audit(ann).await?,
        [("added".to_owned(), ADMIN.to_owned()), ("password_set".to_owned(), ann.to_owned())]
    );
    desk.stop().await
}

#[tokio::test]
async fn an_expired_setup_code_is_refused_and_a_reset_gives_a_new_one() -> anyhow::Result<()> {
    let desk = Desk::start(|_| {}).await?;
    let ann = "ann@acme.test";
    let added = desk.add(ORG, ann, pb::PersonRole::Agent).await?;
    let admin = desk.env.admin_pool().await?;
    sqlx::query("UPDATE people.people SET setup_code_expires_at = now() - interval '1 second' WHERE email = $1")
        .bind(ann)
        .execute(&admin)
        .await?;
    admin.close().await;
    refused(desk.set_password(&added.setup_code, PASSWORD).await, Code::Unauthenticated, "expired");

    let reset = desk
        .people
        .clone()
        .reset_password(with(&desk.admin(), pb::ResetPasswordRequest { org_id: ORG.into(), email: ann.into() }))
        .await?
        .into_inner();
    refused(desk.set_password(&added.setup_code, PASSWORD).await, Code::Unauthenticated, "not valid");
    desk.set_password(&reset.setup_code, PASSWORD).await?;
    let session = desk.sign_in(ORG, ann, PASSWORD).await?;
    assert_eq!(
        (claims(&session.token)["role"].as_str(), claims(&session.token)["agent_id"].as_str()),
        (Some("agent"), Some("ann"))
    );
    desk.list_leads(&session.token, ORG).await?;
    desk.stop().await
}

#[tokio::test]
async fn failed_sign_ins_lock_an_account_and_a_reset_replaces_the_password() -> anyhow::Result<()> {
    let desk = Desk::start(|_| {}).await?;
    let ann = "ann@acme.test";
    let before = desk.signed_in(ann, pb::PersonRole::Operator).await?;
    for attempt in 1..=5 {
        let status = desk.sign_in(ORG, ann, &format!("wrong password {attempt}")).await.expect_err("wrong");
        assert_eq!((status.code(), status.message()), (Code::Unauthenticated, "wrong email or password"), "{attempt}");
    }
    refused(desk.sign_in(ORG, ann, PASSWORD).await, Code::ResourceExhausted, "the account is locked");
    let locked = desk.people().await?.into_iter().find(|p| p.email == ann).expect("ann");
    assert!(locked.locked_until.is_some_and(|t| t.seconds > chrono::Utc::now().timestamp() + 800));
    assert_eq!(
        desk.audit(ann).await?.last().map(|(action, actor)| (action.as_str(), actor.as_str())),
        Some(("locked", "system"))
    );

    // An email no one has locks the same way: locking tells nothing about who exists.
    for _ in 1..=5 {
        refused(desk.sign_in(ORG, "ghost@acme.test", PASSWORD).await, Code::Unauthenticated, "wrong email or password");
    }
    refused(desk.sign_in(ORG, "ghost@acme.test", PASSWORD).await, Code::ResourceExhausted, "locked");

    // A reset lifts the lock, voids the old password and the sessions, and its code works.
    let reset = desk
        .people
        .clone()
        .reset_password(with(&desk.admin(), pb::ResetPasswordRequest { org_id: ORG.into(), email: ann.into() }))
        .await?
        .into_inner();
    assert!(!reset.person.as_ref().expect("person").has_password);
    session_ends(&desk, &before.token).await;
    refused(desk.sign_in(ORG, ann, PASSWORD).await, Code::Unauthenticated, "wrong email or password");
    desk.set_password(&reset.setup_code, "a brand new password").await?;
    refused(desk.sign_in(ORG, ann, PASSWORD).await, Code::Unauthenticated, "wrong email or password");
    let after = desk.sign_in(ORG, ann, "a brand new password").await?;
    desk.list_leads(&after.token, ORG).await?;
    desk.stop().await
}

#[tokio::test]
async fn deactivating_a_person_ends_their_sessions_everywhere_and_their_sign_in() -> anyhow::Result<()> {
    let desk = Desk::start(|_| {}).await?;
    let (ann, bob) = ("ann@acme.test", "bob@acme.test");
    let ann_session = desk.signed_in(ann, pb::PersonRole::Operator).await?;
    let bob_session = desk.signed_in(bob, pb::PersonRole::Operator).await?;
    desk.list_leads(&ann_session.token, ORG).await?;
    desk.list_agents(&ann_session.token).await?;

    let mut people = desk.people.clone();
    let deactivate = |email: &str| pb::DeactivatePersonRequest { org_id: ORG.into(), email: email.into() };
    let gone = people.deactivate_person(with(&desk.admin(), deactivate(ann))).await?.into_inner();
    assert!(!gone.active);
    session_ends(&desk, &ann_session.token).await;
    refused(desk.sign_in(ORG, ann, PASSWORD).await, Code::Unauthenticated, "wrong email or password");
    desk.list_leads(&bob_session.token, ORG).await?;

    // A process started afterwards reads the ends already published before it serves.
    let lead_port = leads_tests::private::free_port()?;
    let key = desk.keys.key.display().to_string();
    let mut process = Process::spawn(
        &desk.env,
        "lead",
        &[("LEADS_GRPC_LEAD_PORT", lead_port.to_string()), ("LEADS_AUTH_SIGNING_KEY_FILE", key)],
    )?;
    process.ready().await?;
    let channel = Channel::from_shared(format!("http://127.0.0.1:{lead_port}"))?.connect().await?;
    let mut fresh = LeadServiceClient::new(channel);
    let request = || pb::ListLeadsRequest { org_id: ORG.into(), ..Default::default() };
    refused(
        fresh.list_leads(with(&ann_session.token, request())).await,
        Code::Unauthenticated,
        "the session has ended",
    );
    fresh.list_leads(with(&bob_session.token, request())).await?;
    process.terminate().await?;

    let own = people.deactivate_person(with(&desk.admin(), deactivate(ADMIN))).await;
    refused(own, Code::FailedPrecondition, "themselves");
    assert_eq!(desk.audit(ann).await?.last().map(|(action, _)| action.as_str()), Some("deactivated"));
    desk.stop().await
}

#[tokio::test]
async fn a_new_role_ends_the_sessions_that_carry_the_old_one() -> anyhow::Result<()> {
    let desk = Desk::start(|_| {}).await?;
    let (ann, bob) = ("ann@acme.test", "bob@acme.test");
    let ann_session = desk.signed_in(ann, pb::PersonRole::Operator).await?;
    let bob_session = desk.signed_in(bob, pb::PersonRole::Operator).await?;
    let mut people = desk.people.clone();
    let update =
        |email: &str| pb::UpdatePersonRequest { org_id: ORG.into(), email: email.into(), ..Default::default() };

    // A new name keeps the sessions: the end of bob's, published after it, is seen first.
    let renamed = pb::UpdatePersonRequest { name: Some("Ann Jones".into()), ..update(ann) };
    assert_eq!(people.update_person(with(&desk.admin(), renamed)).await?.into_inner().name, "Ann Jones");
    let demoted = pb::UpdatePersonRequest {
        role: Some(pb::PersonRole::Agent as i32),
        agent_id: Some("bob".into()),
        ..update(bob)
    };
    people.update_person(with(&desk.admin(), demoted)).await?;
    session_ends(&desk, &bob_session.token).await;
    desk.list_leads(&ann_session.token, ORG).await?;

    // An agent needs an agent; a new role refused leaves the sessions alone.
    let no_agent = pb::UpdatePersonRequest { role: Some(pb::PersonRole::Agent as i32), ..update(ann) };
    refused(people.update_person(with(&desk.admin(), no_agent)).await, Code::InvalidArgument, "agent_id");

    // Signing in again at once gives a token with the new role, which is accepted.
    let again = desk.sign_in(ORG, bob, PASSWORD).await?;
    assert_eq!(
        (claims(&again.token)["role"].as_str(), claims(&again.token)["agent_id"].as_str()),
        (Some("agent"), Some("bob"))
    );
    desk.list_leads(&again.token, ORG).await?;
    let actions: Vec<String> = desk.audit(bob).await?.into_iter().map(|(action, _)| action).collect();
    assert_eq!(actions, ["added", "password_set", "updated"]);
    desk.stop().await
}

#[tokio::test]
async fn a_session_lives_at_most_the_maximum_token_lifetime() -> anyhow::Result<()> {
    let desk = Desk::start(|settings| {
        settings.auth.max_token_lifetime_secs = 600;
        settings.auth.service_token_ttl_secs = 600;
    })
    .await?;
    let session = desk.signed_in("ann@acme.test", pb::PersonRole::Admin).await?;
    let issued = claims(&session.token);
    assert_eq!(issued["exp"].as_i64().unwrap() - issued["iat"].as_i64().unwrap(), 600);
    let left = session.expires_at.expect("expires_at").seconds - chrono::Utc::now().timestamp();
    assert!((590..=600).contains(&left), "{left}");
    desk.list_leads(&session.token, ORG).await?;
    // The person signed in as an admin manages people with that token.
    let listed = desk
        .people
        .clone()
        .list_people(with(&session.token, pb::ListPeopleRequest { org_id: ORG.into() }))
        .await?
        .into_inner();
    assert_eq!(listed.people.len(), 1);
    desk.stop().await
}

#[tokio::test]
async fn services_started_before_the_people_service_follow_its_stream_once_it_exists() -> anyhow::Result<()> {
    let desk = Desk::start_before_people().await?;
    let session = desk.signed_in("ann@acme.test", pb::PersonRole::Operator).await?;
    desk.list_leads(&session.token, ORG).await?;
    let request = pb::DeactivatePersonRequest { org_id: ORG.into(), email: "ann@acme.test".into() };
    desk.people.clone().deactivate_person(with(&desk.admin(), request)).await?;
    session_ends(&desk, &session.token).await;
    desk.stop().await
}

#[tokio::test]
async fn sessions_still_end_after_the_processes_lose_their_consumers() -> anyhow::Result<()> {
    use futures::TryStreamExt;
    let desk = Desk::start(|_| {}).await?;
    let session = desk.signed_in("ann@acme.test", pb::PersonRole::Operator).await?;
    // As after a NATS server lost its memory, or an operator removed them.
    let stream = desk.env.js.get_stream(desk.env.subjects.stream_name(StreamKind::Events("people"))).await?;
    let consumers: Vec<String> = stream.consumer_names().try_collect().await?;
    assert!(!consumers.is_empty(), "the process follows the stream");
    for consumer in &consumers {
        stream.delete_consumer(consumer).await?;
    }
    let request = pb::DeactivatePersonRequest { org_id: ORG.into(), email: "ann@acme.test".into() };
    desk.people.clone().deactivate_person(with(&desk.admin(), request)).await?;
    session_ends(&desk, &session.token).await;
    desk.stop().await
}

async fn sign_in_code(desk: &Desk, token: &str, email: &str) -> Result<pb::CreateSignInCodeResponse, Status> {
    let request = pb::CreateSignInCodeRequest { org_id: ORG.into(), email: email.into() };
    Ok(desk.people.clone().create_sign_in_code(with(token, request)).await?.into_inner())
}

async fn with_code(desk: &Desk, code: &str) -> Result<pb::SignInResponse, Status> {
    Ok(desk.people.clone().sign_in_with_code(pb::SignInWithCodeRequest { code: code.into() }).await?.into_inner())
}

#[tokio::test]
async fn a_sign_in_code_signs_its_person_in_once() -> anyhow::Result<()> {
    let desk = Desk::start(|_| {}).await?;
    let (ann, bob) = ("ann@acme.test", "bob@acme.test");
    desk.add(ORG, ann, pb::PersonRole::Operator).await?;
    desk.add(ORG, bob, pb::PersonRole::Agent).await?;

    // Ann has no password yet: the code alone signs her in, once.
    let created = sign_in_code(&desk, &desk.admin(), "ANN@acme.test").await?;
    assert_eq!(created.code.len(), 43);
    let left = created.expires_at.expect("expires_at").seconds - chrono::Utc::now().timestamp();
    assert!((590..=600).contains(&left), "people.sign_in_code_ttl_secs is ten minutes by default: {left}");
    let session = with_code(&desk, &created.code).await?;
    let issued = claims(&session.token);
    assert_eq!((issued["sub"].as_str(), issued["role"].as_str()), (Some(ann), Some("operator")));
    assert!(session.person.expect("person").last_sign_in_at.is_some());
    desk.list_leads(&session.token, ORG).await?;
    refused(with_code(&desk, &created.code).await, Code::Unauthenticated, "not valid: it was used already");
    refused(with_code(&desk, "made-up").await, Code::Unauthenticated, "not valid");
    refused(with_code(&desk, "").await, Code::Unauthenticated, "not valid");

    // The platform's services may ask for one too; a service token limited to some
    // organisations (an integration's) may not, nor other people, nor other admins.
    let limited = desk.token("crm-sync", Role::Service, ORG);
    refused(sign_in_code(&desk, &limited, bob).await, Code::PermissionDenied, "platform's services");
    let service = desk.token("leads-lead", Role::Service, "*");
    let by_service = sign_in_code(&desk, &service, bob).await?;
    let agent = with_code(&desk, &by_service.code).await?;
    assert_eq!(claims(&agent.token)["agent_id"], "ann", "the agent of the account, as Desk::add made it");
    refused(sign_in_code(&desk, &session.token, bob).await, Code::PermissionDenied, "admin");
    let elsewhere = desk.token(ADMIN, Role::Admin, OTHER);
    refused(sign_in_code(&desk, &elsewhere, bob).await, Code::PermissionDenied, "organisation");
    let anonymous = pb::CreateSignInCodeRequest { org_id: ORG.into(), email: bob.into() };
    refused(desk.people.clone().create_sign_in_code(anonymous).await, Code::Unauthenticated, "bearer token");
    refused(sign_in_code(&desk, &desk.admin(), "nobody@acme.test").await, Code::NotFound, "no person");

    // An expired code is refused saying so, and used up all the same.
    let expiring = sign_in_code(&desk, &desk.admin(), ann).await?;
    let admin = desk.env.admin_pool().await?;
    sqlx::query("UPDATE people.sign_in_codes SET expires_at = now() - interval '1 second' WHERE email = $1")
        .bind(ann)
        .execute(&admin)
        .await?;
    admin.close().await;
    refused(with_code(&desk, &expiring.code).await, Code::Unauthenticated, "expired");
    refused(with_code(&desk, &expiring.code).await, Code::Unauthenticated, "not valid");

    // Deactivating a person voids their codes, and no new one is made for them.
    let unused = sign_in_code(&desk, &desk.admin(), bob).await?;
    let deactivate = pb::DeactivatePersonRequest { org_id: ORG.into(), email: bob.into() };
    desk.people.clone().deactivate_person(with(&desk.admin(), deactivate)).await?;
    refused(with_code(&desk, &unused.code).await, Code::Unauthenticated, "not valid");
    refused(sign_in_code(&desk, &desk.admin(), bob).await, Code::FailedPrecondition, "deactivated");

    let actions = desk.audit(ann).await?;
    assert_eq!(
        actions[1..3],
        [("sign_in_code_created".to_owned(), ADMIN.to_owned()), ("signed_in_with_code".to_owned(), ann.to_owned())]
    );
    assert!(desk.audit(bob).await?.contains(&("sign_in_code_created".to_owned(), "leads-lead".to_owned())));
    desk.stop().await
}

/// `leads people ...` against the desk's people service, its token signed with the desk's key.
async fn cli(desk: &Desk, args: &[&str], console_port: u16) -> anyhow::Result<std::process::Output> {
    let people = desk.nodes[0].addr(ServiceName::People);
    Ok(tokio::process::Command::new(leads_tests::leads_binary())
        .arg("people")
        .args(args)
        .env("LEADS_AUTH_SIGNING_KEY_FILE", &desk.keys.key)
        .env("LEADS_PEOPLE_ENDPOINT", format!("http://{people}"))
        .env("LEADS_CONSOLE_PORT", console_port.to_string())
        .stdin(std::process::Stdio::null())
        .output()
        .await?)
}

/// What follows `marker` in `text`, up to the end of its line.
fn after<'a>(text: &'a str, marker: &str) -> &'a str {
    let start = text.find(marker).unwrap_or_else(|| panic!("{marker:?} in {text:?}")) + marker.len();
    text[start..].lines().next().unwrap_or_default()
}

#[tokio::test]
async fn the_cli_adds_a_person_and_prints_the_links_that_let_them_in() -> anyhow::Result<()> {
    let desk = Desk::start(|_| {}).await?;
    let carol = "carol@acme.test";
    let add = ["add", "--org", ORG, "--email", carol, "--name", "Carol", "--role", "agent", "--agent-id", "carol"];
    let added = cli(&desk, &[&add[..], &["--console-url", "https://console.acme.test/"]].concat(), 8080).await?;
    assert!(added.status.success(), "{added:?}");
    let stdout = String::from_utf8(added.stdout)?;
    let setup_code = after(&stdout, "choose a password at https://console.acme.test/set-password?code=");
    assert_eq!(after(&stdout, "setup code, valid until ").rsplit(": ").next(), Some(setup_code));
    desk.set_password(setup_code, PASSWORD).await?;
    let session = desk.sign_in(ORG, carol, PASSWORD).await?;
    assert_eq!(
        (claims(&session.token)["role"].as_str(), claims(&session.token)["agent_id"].as_str()),
        (Some("agent"), Some("carol"))
    );

    // Once there, adding again is refused, unless told to leave an existing person be.
    let again = cli(&desk, &add, 8080).await?;
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already"), "{again:?}");
    let if_absent = cli(&desk, &[&add[..], &["--if-absent"]].concat(), 8080).await?;
    assert!(if_absent.status.success() && if_absent.stdout.is_empty(), "{if_absent:?}");

    // The sign-in link points at the console's port unless told otherwise, and signs in once.
    let link = cli(&desk, &["sign-in-link", "--org", ORG, "--email", carol], 18080).await?;
    assert!(link.status.success(), "{link:?}");
    let stdout = String::from_utf8(link.stdout)?;
    let code = after(&stdout, "http://127.0.0.1:18080/sign-in/code?code=");
    let signed_in = with_code(&desk, code).await?;
    assert_eq!(claims(&signed_in.token)["sub"], carol);
    desk.list_leads(&signed_in.token, ORG).await?;
    refused(with_code(&desk, code).await, Code::Unauthenticated, "not valid");
    let nobody = cli(&desk, &["sign-in-link", "--org", ORG, "--email", "nobody@acme.test"], 18080).await?;
    assert!(!nobody.status.success());
    assert!(String::from_utf8_lossy(&nobody.stderr).contains("NotFound"), "{nobody:?}");

    let actions = desk.audit(carol).await?;
    assert_eq!(actions[0], ("added".to_owned(), "leads-cli".to_owned()), "the audit names the command");
    desk.stop().await
}

/// Where the console would take the provider's answer; the provider sends the browser there.
const REDIRECT_URI: &str = "http://127.0.0.1:8080/sign-in/oidc/callback";

/// An OpenID Connect provider of the test's own: oidc-provider-mock, which requires a nonce and,
/// as tests/oidc_provider.py runs it, PKCE with S256, on a free port.
struct Provider {
    child: tokio::process::Child,
    issuer: String,
    http: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Full<bytes::Bytes>,
    >,
}

/// An HTTP answer: status, `Location`, body.
type Answer = (u16, String, String);

impl Provider {
    async fn start() -> anyhow::Result<Self> {
        let tests = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let venv = tests.join("../.data/venv/bin/python");
        let python = match std::env::var_os("LEADS_TEST_PYTHON") {
            Some(python) => PathBuf::from(python),
            None if venv.exists() => venv,
            None => panic!(
                "no Python with tests/requirements.txt: run eval \"$(deploy/local/infra.sh --test-venv)\" first \
                 (make test does), which sets LEADS_TEST_PYTHON"
            ),
        };
        let port = leads_tests::private::free_port()?;
        let child = tokio::process::Command::new(python)
            .arg(tests.join("oidc_provider.py"))
            .args(["--port", &port.to_string(), "--require-nonce", "true"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
        let provider = Self { child, issuer: format!("http://127.0.0.1:{port}"), http };
        let discovery = format!("{}/.well-known/openid-configuration", provider.issuer);
        eventually_ok(Duration::from_secs(60), "the provider to serve its discovery document", || async {
            match provider.send("GET", &discovery, None, String::new()).await {
                Ok((200, _, body)) => Ok(body),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
        Ok(provider)
    }

    async fn send(&self, method: &str, url: &str, content_type: Option<&str>, body: String) -> anyhow::Result<Answer> {
        use http_body_util::BodyExt;
        let mut request = hyper::Request::builder().method(method).uri(url);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let response = self.http.request(request.body(http_body_util::Full::new(bytes::Bytes::from(body)))?).await?;
        let status = response.status().as_u16();
        let location = response.headers().get("location").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        let body = String::from_utf8_lossy(&response.into_body().collect().await?.to_bytes()).into_owned();
        Ok((status, location, body))
    }

    /// A client registered for `REDIRECT_URI` that authenticates with client_secret_basic: its
    /// id and secret.
    async fn register(&self) -> anyhow::Result<(String, String)> {
        let body =
            serde_json::json!({ "redirect_uris": [REDIRECT_URI], "token_endpoint_auth_method": "client_secret_basic" });
        let url = format!("{}/oauth2/clients", self.issuer);
        let (status, _, body) = self.send("POST", &url, Some("application/json"), body.to_string()).await?;
        anyhow::ensure!(status == 201, "registering a client: {status} {body}");
        let client: serde_json::Value = serde_json::from_str(&body)?;
        Ok((
            client["client_id"].as_str().unwrap_or_default().into(),
            client["client_secret"].as_str().unwrap_or_default().into(),
        ))
    }

    /// Gives the user `sub` these claims (besides `sub`) in their next ID tokens.
    async fn user(&self, sub: &str, claims: serde_json::Value) -> anyhow::Result<()> {
        let url = format!("{}/users/{sub}", self.issuer);
        let (status, _, body) = self.send("PUT", &url, Some("application/json"), claims.to_string()).await?;
        anyhow::ensure!(status == 204, "setting {sub}'s claims: {status} {body}");
        Ok(())
    }

    /// Signs in at `authorization_url` as the user `sub` would in the provider's form; answers
    /// the code and the state it sends to the redirect URI.
    async fn authorize(&self, authorization_url: &str, sub: &str) -> anyhow::Result<(String, String)> {
        let form = format!("sub={}", sub.replace('@', "%40"));
        let (status, location, body) =
            self.send("POST", authorization_url, Some("application/x-www-form-urlencoded"), form).await?;
        anyhow::ensure!(status == 302, "the provider did not redirect: {status} {body}");
        let query = location.strip_prefix(&format!("{REDIRECT_URI}?")).unwrap_or_else(|| panic!("{location}"));
        let param =
            |name: &str| query.split('&').find_map(|pair| pair.strip_prefix(&format!("{name}="))).map(str::to_owned);
        let code = param("code").ok_or_else(|| anyhow::anyhow!("no code: {location}"))?;
        Ok((code, param("state").unwrap_or_default()))
    }

    async fn stop(mut self) -> anyhow::Result<()> {
        self.child.kill().await?;
        Ok(())
    }
}

async fn set_provider(
    desk: &Desk,
    token: &str,
    request: pb::SetOidcProviderRequest,
) -> Result<pb::OidcProvider, Status> {
    Ok(desk.people.clone().set_oidc_provider(with(token, request)).await?.into_inner())
}

async fn begin(desk: &Desk, org: &str) -> Result<pb::BeginOidcSignInResponse, Status> {
    Ok(desk.people.clone().begin_oidc_sign_in(pb::BeginOidcSignInRequest { org_id: org.into() }).await?.into_inner())
}

async fn complete(desk: &Desk, state: &str, code: &str) -> Result<pb::SignInResponse, Status> {
    let request = pb::CompleteOidcSignInRequest { state: state.into(), code: code.into() };
    Ok(desk.people.clone().complete_oidc_sign_in(request).await?.into_inner())
}

/// Begins a sign-in, signs in at the provider as `sub` and completes it.
async fn oidc_sign_in(
    desk: &Desk,
    provider: &Provider,
    sub: &str,
) -> anyhow::Result<Result<pb::SignInResponse, Status>> {
    let begun = begin(desk, ORG).await?;
    let (code, state) = provider.authorize(&begun.authorization_url, sub).await?;
    assert_eq!(state, begun.state, "the provider sends the state back");
    Ok(complete(desk, &state, &code).await)
}

#[tokio::test]
async fn an_openid_connect_sign_in_lets_in_the_active_person_with_the_providers_email() -> anyhow::Result<()> {
    let provider = Provider::start().await?;
    let desk = Desk::start(|_| {}).await?;
    let (ann, bob) = ("ann@acme.test", "bob@acme.test");
    desk.add(ORG, ann, pb::PersonRole::Operator).await?;
    desk.add(ORG, bob, pb::PersonRole::Operator).await?;
    refused(begin(&desk, ORG).await, Code::FailedPrecondition, "no OpenID Connect provider");

    let (client_id, secret) = provider.register().await?;
    let settings = pb::SetOidcProviderRequest {
        org_id: ORG.into(),
        issuer: provider.issuer.clone(),
        client_id: client_id.clone(),
        client_secret: secret,
        redirect_uri: REDIRECT_URI.into(),
        email_claim: String::new(),
    };
    let set = set_provider(&desk, &desk.admin(), settings.clone()).await?;
    assert_eq!((set.issuer.as_str(), set.client_id.as_str()), (provider.issuer.as_str(), client_id.as_str()));
    assert!(set.has_client_secret);
    assert_eq!(set.email_claim, "email");
    // Only an admin sets it, and never over plain HTTP beyond this machine.
    let service = desk.token("leads-cli", Role::Service, ORG);
    refused(set_provider(&desk, &service, settings.clone()).await, Code::PermissionDenied, "admin");
    let far = pb::SetOidcProviderRequest { issuer: "http://idp.acme.test".into(), ..settings.clone() };
    refused(set_provider(&desk, &desk.admin(), far).await, Code::InvalidArgument, "issuer");
    // Nor inside the network it runs in, but for the allowed networks (the tests allow loopback).
    let metadata = pb::SetOidcProviderRequest { issuer: "https://169.254.169.254".into(), ..settings.clone() };
    refused(set_provider(&desk, &desk.admin(), metadata).await, Code::InvalidArgument, "which is link-local");

    // The authorization URL asks for a code with PKCE (S256) and a nonce, and names the state.
    let begun = begin(&desk, ORG).await?;
    assert!(begun.authorization_url.starts_with(&format!("{}/oauth2/authorize?", provider.issuer)));
    for part in
        ["response_type=code", "code_challenge_method=S256", "code_challenge=", "nonce=", "scope=openid%20email"]
    {
        assert!(begun.authorization_url.contains(part), "{part} in {}", begun.authorization_url);
    }
    assert!(begun.authorization_url.contains(&format!("state={}", begun.state)));
    let (code, state) = provider.authorize(&begun.authorization_url, ann).await?;
    refused(complete(&desk, "made-up", &code).await, Code::Unauthenticated, "state is not valid");
    let session = complete(&desk, &state, &code).await?;
    let issued = claims(&session.token);
    assert_eq!((issued["sub"].as_str(), issued["role"].as_str()), (Some(ann), Some("operator")));
    assert_eq!(issued["orgs"], serde_json::json!([ORG]));
    desk.list_leads(&session.token, ORG).await?;
    // A state signs in once.
    refused(complete(&desk, &state, &code).await, Code::Unauthenticated, "state is not valid");

    // The provider's word is not enough: the email must be an active person's of the
    // organisation, and signing in makes no account.
    refused(oidc_sign_in(&desk, &provider, "nobody@acme.test").await?, Code::Unauthenticated, "no active person");
    assert_eq!(desk.people().await?.len(), 2);
    let deactivate = pb::DeactivatePersonRequest { org_id: ORG.into(), email: bob.into() };
    desk.people.clone().deactivate_person(with(&desk.admin(), deactivate)).await?;
    refused(oidc_sign_in(&desk, &provider, bob).await?, Code::Unauthenticated, "no active person");

    // The verifier sent is the one the challenge was made of: another is refused by the provider.
    let begun = begin(&desk, ORG).await?;
    let (code, state) = provider.authorize(&begun.authorization_url, ann).await?;
    let admin = desk.env.admin_pool().await?;
    let tampered = sqlx::query("UPDATE people.oidc_sign_ins SET code_verifier = repeat('x', 43) WHERE org_id = $1")
        .bind(ORG)
        .execute(&admin)
        .await?;
    assert_eq!(tampered.rows_affected(), 1);
    admin.close().await;
    refused(complete(&desk, &state, &code).await, Code::Unauthenticated, "Code challenge failed");

    // Another claim may carry the email; the secret stays when the issuer and client do.
    provider.user("ann-at-the-provider", serde_json::json!({ "work_email": "Ann@Acme.Test" })).await?;
    let by_claim = pb::SetOidcProviderRequest {
        client_secret: String::new(),
        email_claim: "work_email".into(),
        ..settings.clone()
    };
    let set = set_provider(&desk, &desk.admin(), by_claim).await?;
    assert!(set.has_client_secret, "kept");
    let session = oidc_sign_in(&desk, &provider, "ann-at-the-provider").await??;
    assert_eq!(claims(&session.token)["sub"], ann);

    let actions: Vec<String> = desk.audit(ann).await?.into_iter().map(|(action, _)| action).collect();
    assert_eq!(actions, ["added", "signed_in_with_oidc", "signed_in_with_oidc"]);
    desk.stop().await?;
    provider.stop().await
}
