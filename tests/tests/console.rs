//! The console over HTTP against the real services: signing in, the session cookie's flags,
//! the security headers, CSRF refusals, escaping of what contacts send, and the rules the
//! services enforce showing through the pages. Browser behaviour (scripts, live updates,
//! accessibility) is tested in tests/browser.

use leads_proto::v1::lead_service_client::LeadServiceClient;
use leads_tests::console::{Console, ORG, PASSWORD};
use leads_tests::{browserless::Browserless, chat_event, eventually, pb, phone};
use platform::ServiceName;
use std::time::Duration;

#[tokio::test]
async fn a_person_signs_in_and_the_session_is_guarded() -> anyhow::Result<()> {
    let console = Console::start().await?;
    console.person("olga@acme.test", pb::PersonRole::Operator, "").await?;

    // Not signed in: every page leads to the sign-in form.
    let mut browser = Browserless::new(console.addr);
    let leads = browser.get("/leads").await?;
    assert_eq!((leads.status, leads.header("location")), (303, "/sign-in"));

    // The form, with its security headers and a CSRF token bound to a pre-session cookie.
    let form = browser.get("/sign-in").await?;
    assert_eq!(form.status, 200);
    let csp = form.header("content-security-policy");
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
        "{csp}"
    );
    assert_eq!(form.header("x-frame-options"), "DENY");
    let csrf = form.csrf();

    // A wrong password is refused on the page; a post without the token is refused outright.
    let wrong = browser
        .post(
            "/sign-in",
            &[("_csrf", &csrf), ("org_id", ORG), ("email", "olga@acme.test"), ("password", "nope nope nope")],
        )
        .await?;
    assert_eq!(wrong.status, 401);
    assert!(wrong.body.contains("wrong email or password"), "{}", wrong.body);
    let forged =
        browser.post("/sign-in", &[("org_id", ORG), ("email", "olga@acme.test"), ("password", PASSWORD)]).await?;
    assert_eq!(forged.status, 403, "no CSRF token: {}", forged.body);

    // Signed in: an HttpOnly, SameSite=Strict cookie holding no token in any URL.
    let signed = browser
        .post("/sign-in", &[("_csrf", &csrf), ("org_id", ORG), ("email", "olga@acme.test"), ("password", PASSWORD)])
        .await?;
    assert_eq!((signed.status, signed.header("location")), (303, "/leads"));
    let cookie = browser.set_cookies.iter().find(|c| c.starts_with("leads_session=")).expect("a session cookie");
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict") && cookie.contains("Path=/"), "{cookie}");
    let page = browser.get("/leads").await?;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("olga@acme.test") && page.body.contains("0 leads"), "{}", page.body);
    assert_eq!(page.header("cache-control"), "no-store");

    // Signing out ends it.
    let csrf = page.csrf();
    let out = browser.post("/sign-out", &[("_csrf", &csrf)]).await?;
    assert_eq!(out.header("location"), "/sign-in");
    assert_eq!(browser.get("/leads").await?.status, 303);
    console.stop().await
}

#[tokio::test]
async fn what_a_contact_sends_stays_text_and_changes_need_the_pages_token() -> anyhow::Result<()> {
    let console = Console::start().await?;
    console.person("olga@acme.test", pb::PersonRole::Operator, "").await?;
    let mut browser = console.signed_in("olga@acme.test").await?;

    let hostile = "<img src=x onerror=alert(1)>";
    let mut event = chat_event("e-1", &phone(1), "\"><script>alert(2)</script>");
    event["contact"]["name"] = serde_json::Value::String(hostile.into());
    console.env.publish_interaction(ORG, &event).await?;
    let lead_id = eventually(Duration::from_secs(30), "the lead on the page", || async {
        let mut lead = LeadServiceClient::new(console.node.channel(ServiceName::Lead).await.ok()?);
        let mut request = tonic::Request::new(pb::ListLeadsRequest { org_id: ORG.into(), ..Default::default() });
        request.metadata_mut().insert("authorization", format!("Bearer {}", console.admin_token().ok()?).parse().ok()?);
        lead.list_leads(request).await.ok()?.into_inner().leads.into_iter().next().map(|l| l.id)
    })
    .await;
    let page = browser.get("/leads").await?;
    let escaped = ["&lt;img src=x onerror=alert(1)&gt;", "&#60;img src=x onerror=alert(1)&#62;"];
    assert!(escaped.iter().any(|e| page.body.contains(e)), "the name is shown as text: {}", page.body);
    assert!(!page.body.contains("<img src=x") && !page.body.contains("<script>alert"), "{}", page.body);
    assert!(page.body.len() < 150 * 1024, "the list page weighs {} bytes", page.body.len());

    // The drawer, then a status change: refused without the page's token, made with it.
    let drawer = browser.get(&format!("/leads/{lead_id}")).await?;
    assert_eq!(drawer.status, 200);
    assert!(drawer.body.contains("Change status") && !drawer.body.contains("<img"), "{}", drawer.body);
    let path = format!("/leads/{lead_id}/status");
    let refused = browser.post(&path, &[("status", "qualified")]).await?;
    assert_eq!(refused.status, 403);
    let other_site =
        browser.post(&path, &[("_csrf", "forged-token-of-the-right-len"), ("status", "qualified")]).await?;
    assert_eq!(other_site.status, 403);
    let csrf = drawer.csrf();
    let changed = browser.post(&path, &[("_csrf", &csrf), ("status", "qualified"), ("manual_score", "88")]).await?;
    assert_eq!(changed.status, 303, "{}", changed.body);
    let after = browser.get(&format!("/leads/{lead_id}")).await?;
    assert!(after.body.contains("Qualified") && after.body.contains("88"), "{}", after.body);

    // A final status: the lead stays readable, and its actions are no longer offered.
    browser.post(&path, &[("_csrf", &csrf), ("status", "lost")]).await?;
    let inactive = browser.get(&format!("/leads/{lead_id}")).await?;
    assert!(inactive.body.contains("final, so it no longer changes"), "{}", inactive.body);
    assert!(!inactive.body.contains("id=\"change-status\""), "no status form for an inactive lead");
    let list = browser.get("/leads").await?;
    assert!(list.body.contains("disabled aria-label="), "its checkbox is disabled");
    console.stop().await
}

#[tokio::test]
async fn an_admin_turns_a_status_rule_on_in_settings_and_an_operator_only_reads_them() -> anyhow::Result<()> {
    let console = Console::start().await?;
    console.person("ada@acme.test", pb::PersonRole::Admin, "").await?;
    console.person("olga@acme.test", pb::PersonRole::Operator, "").await?;
    let mut admin = console.signed_in("ada@acme.test").await?;
    let page = admin.get("/settings").await?;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("No change yet") && page.body.contains("Save settings"), "{}", page.body);
    let csrf = page.csrf();

    let refused = admin.post("/settings", &[("_csrf", &csrf), ("version", "0"), ("qualifying_at", "150")]).await?;
    assert_eq!(refused.status, 400);
    assert!(refused.body.contains("status_rules.qualifying_at"), "the field is named: {}", refused.body);
    let saved = admin
        .post(
            "/settings",
            &[
                ("_csrf", &csrf),
                ("version", "0"),
                ("qualifying_at", "60"),
                ("follow_up_status", "on"),
                ("after_follow_ups", "qualified"),
                ("conversation_url_template", "https://chat.example.com/c/{conversation_id}"),
            ],
        )
        .await?;
    assert_eq!((saved.status, saved.header("location")), (303, "/settings"), "{}", saved.body);
    let after = admin.get("/settings").await?;
    assert!(
        after.body.contains("value=\"60\"") && after.body.contains("qualifying_at: off -&#62; 60"),
        "{}",
        after.body
    );
    assert!(after.body.contains("ada@acme.test"), "the change names who made it");
    // The conversation link now shows on a lead's drawer.
    let mut event = chat_event("e-1", &phone(1), "hello");
    event["conversation_id"] = serde_json::json!("conv-991");
    console.env.publish_interaction(ORG, &event).await?;
    let lead_id = eventually(Duration::from_secs(30), "the lead", || async {
        let mut lead = LeadServiceClient::new(console.node.channel(ServiceName::Lead).await.ok()?);
        let mut request = tonic::Request::new(pb::ListLeadsRequest { org_id: ORG.into(), ..Default::default() });
        request.metadata_mut().insert("authorization", format!("Bearer {}", console.admin_token().ok()?).parse().ok()?);
        lead.list_leads(request).await.ok()?.into_inner().leads.into_iter().next().map(|l| l.id)
    })
    .await;
    let drawer = admin.get(&format!("/leads/{lead_id}")).await?;
    assert!(
        drawer.body.contains("href=\"https://chat.example.com/c/conv-991\"") && drawer.body.contains("Open the chat"),
        "{}",
        drawer.body
    );
    // A second admin's stale form is refused, not applied over the first.
    let stale = admin.post("/settings", &[("_csrf", &csrf), ("version", "0"), ("archive_after_days", "30")]).await?;
    assert_eq!(stale.status, 409, "{}", stale.body);

    let mut operator = console.signed_in("olga@acme.test").await?;
    let read = operator.get("/settings").await?;
    assert_eq!(read.status, 200);
    assert!(read.body.contains("Only an admin can change these") && !read.body.contains("Save settings"));
    let csrf = read.csrf();
    let denied = operator.post("/settings", &[("_csrf", &csrf), ("version", "1"), ("qualifying_at", "10")]).await?;
    assert_eq!(denied.status, 403, "the lead service refuses an operator: {}", denied.body);
    console.stop().await
}

/// The assignment service as an admin of `acme` calls it.
async fn assignment_client(
    console: &Console,
) -> anyhow::Result<leads_proto::v1::assignment_service_client::AssignmentServiceClient<tonic::transport::Channel>> {
    Ok(leads_proto::v1::assignment_service_client::AssignmentServiceClient::new(
        console.node.channel(ServiceName::Assignment).await?,
    ))
}

fn as_admin<T>(console: &Console, message: T) -> anyhow::Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {}", console.admin_token()?).parse()?);
    Ok(request)
}

async fn agent_as_listed(console: &Console, agent_id: &str) -> anyhow::Result<pb::Agent> {
    let request = as_admin(console, pb::ListAgentsRequest { org_id: ORG.into(), active_only: false })?;
    let agents = assignment_client(console).await?.list_agents(request).await?.into_inner().agents;
    agents.into_iter().find(|a| a.agent_id == agent_id).ok_or_else(|| anyhow::anyhow!("no agent {agent_id} listed"))
}

async fn routes_as_kept(console: &Console) -> anyhow::Result<(i32, Vec<(String, String)>)> {
    let request = as_admin(console, pb::GetAssignmentSettingsRequest { org_id: ORG.into() })?;
    let settings = assignment_client(console).await?.get_assignment_settings(request).await?.into_inner();
    Ok((settings.policy, settings.skill_routes.into_iter().map(|r| (r.r#match, r.skill)).collect()))
}

/// The opening tag of the element with `id` in `body`.
fn tag<'b>(body: &'b str, id: &str) -> &'b str {
    let marker = format!("id=\"{id}\"");
    let at = body.find(&marker).unwrap_or_else(|| panic!("no element {id} in {body}"));
    let start = body[..at].rfind('<').unwrap_or(at);
    let end = body[at..].find('>').map_or(body.len(), |e| at + e + 1);
    &body[start..end]
}

#[tokio::test]
async fn on_the_agents_page_presence_and_capacity_change_as_listed_by_the_assignment_service() -> anyhow::Result<()> {
    let console = Console::start().await?;
    console.person("ada@acme.test", pb::PersonRole::Admin, "").await?;
    let mut admin = console.signed_in("ada@acme.test").await?;
    let csrf = admin.get("/agents").await?.csrf();
    let added = admin.post("/agents", &[("_csrf", &csrf), ("agent_id", "ann"), ("name", "Ann Smith")]).await?;
    assert_eq!(added.status, 303, "{}", added.body);

    let presence = "/agents/ann/presence";
    for (choice, listed) in
        [("offline", pb::Presence::Offline), ("away", pb::Presence::Away), ("available", pb::Presence::Available)]
    {
        let set = admin.post(presence, &[("_csrf", &csrf), ("presence", choice)]).await?;
        assert_eq!((set.status, set.header("location")), (303, "/agents#agent-ann"), "{}", set.body);
        assert_eq!(agent_as_listed(&console, "ann").await?.presence, listed as i32, "{choice}");
        let page = admin.get("/agents").await?;
        let button = tag(&page.body, &format!("presence-{choice}-ann"));
        assert!(button.contains("aria-pressed=\"true\""), "{choice} shows as the pressed one: {button}");
        for other in ["available", "away", "offline"].into_iter().filter(|o| *o != choice) {
            let button = tag(&page.body, &format!("presence-{other}-ann"));
            assert!(button.contains("aria-pressed=\"false\""), "{other} is not pressed: {button}");
        }
    }
    let unknown = admin.post(presence, &[("_csrf", &csrf), ("presence", "asleep")]).await?;
    assert_eq!(unknown.status, 400, "{}", unknown.body);
    let forged = admin.post(presence, &[("presence", "offline")]).await?;
    assert_eq!(forged.status, 403, "no CSRF token: {}", forged.body);
    assert_eq!(agent_as_listed(&console, "ann").await?.presence, pb::Presence::Available as i32);

    // Capacity is set in the agent's details, which the page shows open again after the change.
    let set = admin.post("/agents/ann/capacity", &[("_csrf", &csrf), ("capacity", "7")]).await?;
    assert_eq!((set.status, set.header("location")), (303, "/agents?open=ann#agent-ann"), "{}", set.body);
    assert_eq!(agent_as_listed(&console, "ann").await?.capacity, Some(7));
    let page = admin.get("/agents?open=ann").await?;
    assert!(page.body.contains("0 of 7") && page.body.contains("<details open>"), "{}", page.body);
    assert!(tag(&page.body, "capacity-ann").contains("value=\"7\""), "{}", page.body);
    let refused = admin.post("/agents/ann/capacity", &[("_csrf", &csrf), ("capacity", "5000")]).await?;
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert!(refused.body.contains("capacity"), "the field is named: {}", refused.body);
    let back = admin.post("/agents/ann/capacity", &[("_csrf", &csrf), ("capacity", "")]).await?;
    assert_eq!(back.status, 303, "{}", back.body);
    let listed = agent_as_listed(&console, "ann").await?;
    assert_eq!((listed.capacity, listed.effective_capacity), (None, 10), "back to the organisation's default");
    let closed = admin.get("/agents").await?;
    assert!(!closed.body.contains("<details open>"), "details stay closed unless changed: {}", closed.body);
    console.stop().await
}

#[tokio::test]
async fn an_admin_edits_the_skill_routes_in_settings_an_operator_reads_them_and_an_agent_does_not_see_them()
-> anyhow::Result<()> {
    let console = Console::start().await?;
    console.person("ada@acme.test", pb::PersonRole::Admin, "").await?;
    console.person("olga@acme.test", pb::PersonRole::Operator, "").await?;
    console.person("ann@acme.test", pb::PersonRole::Agent, "ann").await?;
    let mut admin = console.signed_in("ada@acme.test").await?;
    let page = admin.get("/settings").await?;
    assert!(page.body.contains("Skill routes") && page.body.contains("Save skill routes"), "{}", page.body);
    let csrf = page.csrf();
    let policy = [("_csrf", csrf.as_str()), ("version", "0"), ("policy", "balanced"), ("default_capacity", "6")];
    assert_eq!(admin.post("/settings/assignment", &policy).await?.status, 303);

    let routes = "/settings/skill-routes";
    let saved = admin
        .post(
            routes,
            &[
                ("_csrf", &csrf),
                ("version", "1"),
                ("route_match", "whatsapp"),
                ("route_skill", "whatsapp"),
                ("route_match", ""),
                ("route_skill", ""),
                ("route_match", " integration:shop "),
                ("route_skill", "shop"),
            ],
        )
        .await?;
    assert_eq!((saved.status, saved.header("location")), (303, "/settings#skill-routes-title"), "{}", saved.body);
    let kept = vec![("whatsapp".to_owned(), "whatsapp".to_owned()), ("integration:shop".to_owned(), "shop".to_owned())];
    assert_eq!(
        routes_as_kept(&console).await?,
        (pb::AssignmentPolicy::Balanced as i32, kept.clone()),
        "the blank row is left out, the policy kept"
    );
    let after = admin.get("/settings").await?;
    assert!(tag(&after.body, "route-match-2").contains("value=\"integration:shop\""), "{}", after.body);
    assert!(tag(&after.body, "route-match-3").contains("value=\"\""), "a blank row to add one: {}", after.body);
    assert!(
        after.body.contains("skill_routes: none -&#62; whatsapp =&#62; whatsapp, integration:shop =&#62; shop"),
        "the change is listed: {}",
        after.body
    );

    // A route the service refuses: the page again as sent, the service's words beside the field.
    let bad_skill = admin
        .post(
            routes,
            &[
                ("_csrf", &csrf),
                ("version", "2"),
                ("route_match", "whatsapp"),
                ("route_skill", "whatsapp"),
                ("route_match", "sms"),
                ("route_skill", "Bad Skill"),
            ],
        )
        .await?;
    assert_eq!(bad_skill.status, 400, "{}", bad_skill.body);
    assert!(
        tag(&bad_skill.body, "skill-routes-error").starts_with("<span class=\"field-error\"")
            && bad_skill.body.contains("skill_routes.skill: &#34;Bad Skill&#34;"),
        "{}",
        bad_skill.body
    );
    let at = |id: &str| bad_skill.body.find(&format!("id=\"{id}\"")).unwrap_or(usize::MAX);
    assert!(
        at("route-skill-2") < at("skill-routes-error") && at("skill-routes-error") < at("route-match-3"),
        "the words are beside the refused field: {}",
        bad_skill.body
    );
    let field = tag(&bad_skill.body, "route-skill-2");
    assert!(field.contains("value=\"Bad Skill\"") && field.contains("aria-invalid=\"true\""), "{field}");
    assert!(!tag(&bad_skill.body, "route-match-2").contains("aria-invalid"), "only the refused field is marked");
    let twice = admin
        .post(
            routes,
            &[
                ("_csrf", &csrf),
                ("version", "2"),
                ("route_match", "whatsapp"),
                ("route_skill", "whatsapp"),
                ("route_match", "whatsapp"),
                ("route_skill", "other"),
            ],
        )
        .await?;
    assert_eq!(twice.status, 400, "{}", twice.body);
    assert!(tag(&twice.body, "route-match-2").contains("aria-invalid=\"true\""), "{}", twice.body);
    assert!(!tag(&twice.body, "route-match-1").contains("aria-invalid"), "{}", twice.body);
    assert_eq!(routes_as_kept(&console).await?.1, kept, "nothing refused was kept");
    let unpaired = admin.post(routes, &[("_csrf", &csrf), ("version", "2"), ("route_match", "sms")]).await?;
    assert_eq!(unpaired.status, 400, "a route without its skill field is refused: {}", unpaired.body);
    let stale = admin
        .post(routes, &[("_csrf", &csrf), ("version", "1"), ("route_match", "sms"), ("route_skill", "sms")])
        .await?;
    assert_eq!(stale.status, 409, "a second admin's stale form is refused: {}", stale.body);
    let forged = admin.post(routes, &[("version", "2"), ("route_match", "sms"), ("route_skill", "sms")]).await?;
    assert_eq!(forged.status, 403, "no CSRF token: {}", forged.body);

    // The assignment form's refusals show beside their field too.
    let capacity = admin
        .post(
            "/settings/assignment",
            &[("_csrf", &csrf), ("version", "2"), ("policy", "balanced"), ("default_capacity", "0")],
        )
        .await?;
    assert_eq!(capacity.status, 400, "{}", capacity.body);
    let field = tag(&capacity.body, "default-capacity");
    assert!(field.contains("value=\"0\"") && field.contains("aria-invalid=\"true\""), "{field}");
    assert!(tag(&capacity.body, "default-capacity-error").contains("field-error"), "{}", capacity.body);
    assert!(capacity.body.contains("default_capacity: must be between 1 and 1000"), "{}", capacity.body);

    let mut operator = console.signed_in("olga@acme.test").await?;
    let read = operator.get("/settings").await?;
    assert_eq!(read.status, 200);
    assert!(!read.body.contains("Save skill routes"), "an operator reads the routes only");
    assert!(tag(&read.body, "route-match-2").contains("value=\"integration:shop\""), "{}", read.body);
    assert!(!read.body.contains("id=\"route-match-3\""), "no blank row for an operator: {}", read.body);
    let csrf = read.csrf();
    let denied = operator
        .post(routes, &[("_csrf", &csrf), ("version", "2"), ("route_match", "sms"), ("route_skill", "sms")])
        .await?;
    assert_eq!(denied.status, 403, "the assignment service refuses an operator: {}", denied.body);
    assert_eq!(routes_as_kept(&console).await?.1, kept);

    let mut agent = console.signed_in("ann@acme.test").await?;
    let agents = agent.get("/agents").await?;
    assert!(!agents.body.contains("href=\"/settings\""), "no Settings for an agent: {}", agents.body);
    assert_eq!(agent.get("/settings").await?.status, 403, "an agent does not read the settings");
    console.stop().await
}

/// The lead of the contact who wrote as `event`, once the lead service has it.
async fn lead_of_contact(console: &Console, event_id: &str, contact_phone: &str) -> anyhow::Result<String> {
    console.env.publish_interaction(ORG, &chat_event(event_id, contact_phone, "call me back")).await?;
    Ok(eventually(Duration::from_secs(30), "the lead", || async {
        let mut lead = LeadServiceClient::new(console.node.channel(ServiceName::Lead).await.ok()?);
        let request = as_admin(console, pb::ListLeadsRequest { org_id: ORG.into(), ..Default::default() }).ok()?;
        let leads = lead.list_leads(request).await.ok()?.into_inner().leads;
        leads.into_iter().find(|l| l.contact.as_ref().is_some_and(|c| c.phone == contact_phone)).map(|l| l.id)
    })
    .await)
}

/// An active agent `agent_id`, and `lead_id` assigned to it by an admin.
async fn assign_to(console: &Console, lead_id: &str, agent_id: &str) -> anyhow::Result<()> {
    let mut assignment = assignment_client(console).await?;
    let agent = pb::UpsertAgentRequest {
        org_id: ORG.into(),
        agent_id: agent_id.into(),
        name: agent_id.into(),
        active: Some(true),
        ..Default::default()
    };
    assignment.upsert_agent(as_admin(console, agent)?).await?;
    let assign = pb::AssignLeadRequest {
        org_id: ORG.into(),
        lead_id: lead_id.into(),
        agent_id: agent_id.into(),
        ..Default::default()
    };
    assignment.assign_lead(as_admin(console, assign)?).await?;
    Ok(())
}

/// The notifications service, as the test calls it.
async fn notifications_client(
    console: &Console,
) -> anyhow::Result<leads_proto::v1::notification_service_client::NotificationServiceClient<tonic::transport::Channel>>
{
    Ok(leads_proto::v1::notification_service_client::NotificationServiceClient::new(
        console.node.channel(ServiceName::Notifications).await?,
    ))
}

/// The bell's unread count as the header's poll gets it (0 without a count).
async fn bell_count(browser: &mut Browserless) -> anyhow::Result<u32> {
    let bell = browser.get("/notifications/bell").await?;
    anyhow::ensure!(bell.status == 200, "the bell: {} {}", bell.status, bell.body);
    let marker = "class=\"bell-count\">";
    Ok(match bell.body.find(marker) {
        Some(at) => bell.body[at + marker.len()..].split('<').next().unwrap_or_default().parse()?,
        None => 0,
    })
}

#[tokio::test]
async fn an_agent_sees_its_assigned_leads_on_the_bell_and_marks_them_read() -> anyhow::Result<()> {
    let console = Console::start().await?;
    console.person("ann@acme.test", pb::PersonRole::Agent, "ann").await?;
    console.person("ada@acme.test", pb::PersonRole::Admin, "").await?;
    let first = lead_of_contact(&console, "e-1", &phone(1)).await?;
    let second = lead_of_contact(&console, "e-2", &phone(2)).await?;
    assign_to(&console, &first, "ann").await?;
    assign_to(&console, &second, "ann").await?;

    let mut agent = console.signed_in("ann@acme.test").await?;
    let leads = agent.get("/leads").await?;
    assert!(
        leads.body.contains("id=\"bell\"") && leads.body.contains("hx-get=\"/notifications/bell\""),
        "{}",
        leads.body
    );
    eventually(Duration::from_secs(30), "both leads told to ann", || async {
        let request = as_admin(
            &console,
            pb::ListNotificationsRequest { org_id: ORG.into(), agent_id: "ann".into(), ..Default::default() },
        )
        .ok()?;
        let listed = notifications_client(&console).await.ok()?.list_notifications(request).await.ok()?.into_inner();
        (listed.unread == 2).then_some(())
    })
    .await;
    assert_eq!(bell_count(&mut agent).await?, 2);

    // Both, newest first, each linking to its lead's drawer; then one marked read.
    let page = agent.get("/notifications").await?;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("Your notifications") && page.body.contains("2 unread"), "{}", page.body);
    let (at_first, at_second) =
        (page.body.find(&format!("href=\"/leads/{first}\"")), page.body.find(&format!("href=\"/leads/{second}\"")));
    assert!(at_second.is_some() && at_first.is_some() && at_second < at_first, "newest first: {}", page.body);
    assert!(!page.body.contains("name=\"agent\" value=\"ann\""), "an agent does not pick whose");
    let marker = "name=\"id\" value=\"";
    let start = page.body.find(marker).expect("a mark-read form") + marker.len();
    let newest = page.body[start..].split('"').next().unwrap_or_default().to_owned();
    let csrf = page.csrf();
    assert_eq!(agent.post("/notifications/read", &[("id", newest.as_str())]).await?.status, 403, "no CSRF token");
    let marked = agent.post("/notifications/read", &[("_csrf", &csrf), ("id", &newest)]).await?;
    assert_eq!((marked.status, marked.header("location")), (303, "/notifications"), "{}", marked.body);
    assert_eq!(bell_count(&mut agent).await?, 1);
    let page = agent.get("/notifications").await?;
    assert!(page.body.contains("1 unread") && page.body.contains("notification read"), "{}", page.body);

    // Everything up to now, marked at once.
    agent.post("/notifications/read", &[("_csrf", &csrf), ("all", "1")]).await?;
    assert_eq!(bell_count(&mut agent).await?, 0);
    assert!(agent.get("/notifications").await?.body.contains("none unread"));

    // An admin reads the admins' notifications, and picks the agent's.
    let mut admin = console.signed_in("ada@acme.test").await?;
    let admins = admin.get("/notifications").await?;
    assert!(
        admins.body.contains("The admins&#39; notifications") || admins.body.contains("The admins&#x27; notifications"),
        "{}",
        admins.body
    );
    let anns = admin.get("/notifications?agent=ann").await?;
    assert!(
        anns.body.contains("Notifications of agent ann") && anns.body.contains(&format!("/leads/{first}")),
        "{}",
        anns.body
    );
    console.stop().await
}

#[tokio::test]
async fn an_admin_sets_the_notification_settings_and_an_operator_only_reads_them() -> anyhow::Result<()> {
    let console = Console::start().await?;
    console.person("ada@acme.test", pb::PersonRole::Admin, "").await?;
    console.person("olga@acme.test", pb::PersonRole::Operator, "").await?;
    let mut admin = console.signed_in("ada@acme.test").await?;
    let page = admin.get("/settings").await?;
    assert!(page.body.contains("Save notifications") && page.body.contains("href=\"/webhooks\""), "{}", page.body);
    let version = {
        let form = &page.body[page.body.find("action=\"/settings/notifications\"").expect("the form")..];
        let marker = "name=\"version\" value=\"";
        let start = form.find(marker).expect("its version") + marker.len();
        form[start..].split('"').next().unwrap_or_default().to_owned()
    };
    let csrf = page.csrf();
    let saved = admin
        .post(
            "/settings/notifications",
            &[
                ("_csrf", &csrf),
                ("version", &version),
                ("remind_before_minutes", "30"),
                ("overdue_after_minutes", "90"),
                ("escalate_overdue", "on"),
            ],
        )
        .await?;
    assert_eq!((saved.status, saved.header("location")), (303, "/settings"), "{}", saved.body);
    let page = admin.get("/settings").await?;
    assert!(tag(&page.body, "remind-before").contains("value=\"30\""), "{}", page.body);
    assert!(tag(&page.body, "overdue-after").contains("value=\"90\""));

    // A value the service refuses: the page again, the words beside the field, as sent.
    let version = (version.parse::<i64>()? + 1).to_string();
    let refused = admin
        .post(
            "/settings/notifications",
            &[("_csrf", &csrf), ("version", &version), ("remind_before_minutes", "30"), ("overdue_after_minutes", "0")],
        )
        .await?;
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert!(tag(&refused.body, "overdue-after").contains("aria-invalid=\"true\""), "{}", refused.body);
    assert!(refused.body.contains("id=\"overdue-after-error\">overdue_after_minutes:"), "{}", refused.body);

    let mut operator = console.signed_in("olga@acme.test").await?;
    let read = operator.get("/settings").await?;
    assert!(tag(&read.body, "remind-before").contains("value=\"30\""), "{}", read.body);
    assert!(!read.body.contains("Save notifications") && !read.body.contains("href=\"/webhooks\""), "{}", read.body);
    let csrf = read.csrf();
    let denied = operator
        .post(
            "/settings/notifications",
            &[("_csrf", &csrf), ("version", &version), ("remind_before_minutes", "5"), ("overdue_after_minutes", "60")],
        )
        .await?;
    assert_eq!(denied.status, 403, "the notifications service refuses an operator: {}", denied.body);
    assert_eq!(operator.get("/webhooks").await?.status, 403);
    console.stop().await
}

#[tokio::test]
async fn an_admin_creates_a_webhook_endpoint_sees_its_secret_once_and_its_deliveries() -> anyhow::Result<()> {
    let receiver = leads_tests::receiver::Receiver::accepting().await?;
    let console = Console::start_with(|settings| {
        settings.notifications.webhook_allowed_networks = "127.0.0.1/32".into();
        settings.notifications.tick_ms = 100;
    })
    .await?;
    console.person("ada@acme.test", pb::PersonRole::Admin, "").await?;
    let mut admin = console.signed_in("ada@acme.test").await?;
    let page = admin.get("/webhooks").await?;
    assert!(page.body.contains("No endpoint yet") && page.body.contains("value=\"lead.assigned\""), "{}", page.body);
    let csrf = page.csrf();

    // A private address: refused beside the URL field, the form as it was sent.
    let refused = admin
        .post("/webhooks", &[("_csrf", &csrf), ("url", "http://10.1.2.3/hook"), ("event_type", "lead.assigned")])
        .await?;
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert!(refused.body.contains("id=\"webhook-url-error\">url: is a private address"), "{}", refused.body);
    assert!(tag(&refused.body, "webhook-url").contains("value=\"http://10.1.2.3/hook\""));

    let created = admin
        .post(
            "/webhooks",
            &[("_csrf", &csrf), ("url", &receiver.url()), ("description", "CRM"), ("event_type", "lead.assigned")],
        )
        .await?;
    assert_eq!(created.status, 200, "{}", created.body);
    assert!(created.body.contains("whsec_") && created.body.contains("not shown again"), "{}", created.body);
    let list = admin.get("/webhooks").await?;
    assert!(!list.body.contains("whsec_"), "the secret is shown once: {}", list.body);
    assert!(list.body.contains(&receiver.url()) && list.body.contains(">enabled<"), "{}", list.body);
    let marker = "data-endpoint=\"";
    let start = list.body.find(marker).expect("the endpoint's row") + marker.len();
    let endpoint = list.body[start..].split('"').next().unwrap_or_default().to_owned();
    let path = format!("/webhooks/{endpoint}");

    // A lead assigned: delivered, and in the endpoint's log.
    let lead = lead_of_contact(&console, "e-1", &phone(1)).await?;
    assign_to(&console, &lead, "ann").await?;
    let message = eventually(Duration::from_secs(30), "the delivery", || async {
        receiver.received().first().map(|r| r.id.clone())
    })
    .await;
    eventually(Duration::from_secs(30), "the attempt in the log", || async {
        let request = as_admin(
            &console,
            pb::ListWebhookAttemptsRequest { org_id: ORG.into(), endpoint_id: endpoint.clone(), ..Default::default() },
        )
        .ok()?;
        let log = notifications_client(&console).await.ok()?.list_webhook_attempts(request).await.ok()?.into_inner();
        log.attempts.iter().any(|a| a.succeeded).then_some(())
    })
    .await;
    let log = admin.get(&path).await?;
    assert!(log.body.contains("(delivered)"), "{}", log.body);
    assert!(log.body.contains(&message) && log.body.contains("lead.assigned"), "{}", log.body);

    // Replayed: one message, then since a time (which must be given).
    let replayed = admin.post(&format!("{path}/replay"), &[("_csrf", &csrf), ("message_id", &message)]).await?;
    assert!(replayed.body.contains("1 message queued again."), "{}", replayed.body);
    eventually(Duration::from_secs(30), "the replay", || async { (receiver.received().len() >= 2).then_some(()) })
        .await;
    let no_time = admin.post(&format!("{path}/replay"), &[("_csrf", &csrf), ("since", "")]).await?;
    assert_eq!(no_time.status, 400);
    assert!(no_time.body.contains("id=\"replay-since-error\">since:"), "{}", no_time.body);

    // A new secret, shown once; disabled; deleted after a confirmation.
    let rotated = admin.post(&format!("{path}/rotate"), &[("_csrf", &csrf)]).await?;
    assert!(rotated.body.contains("whsec_"), "{}", rotated.body);
    let version = {
        let page = admin.get(&path).await?;
        let marker = "name=\"version\" value=\"";
        let start = page.body.find(marker).expect("the version") + marker.len();
        page.body[start..].split('"').next().unwrap_or_default().to_owned()
    };
    let disabled = admin
        .post(&format!("{path}/enabled"), &[("_csrf", &csrf), ("enabled", "false"), ("version", &version)])
        .await?;
    assert_eq!(disabled.status, 303, "{}", disabled.body);
    assert!(admin.get("/webhooks").await?.body.contains(">disabled<"));
    let confirm = admin.get(&format!("{path}/delete")).await?;
    assert!(confirm.body.contains("Delete endpoint") && confirm.body.contains(&receiver.url()), "{}", confirm.body);
    let deleted = admin.post(&format!("{path}/delete"), &[("_csrf", &csrf)]).await?;
    assert_eq!((deleted.status, deleted.header("location")), (303, "/webhooks"));
    assert!(admin.get("/webhooks").await?.body.contains("No endpoint yet"));
    console.stop().await
}
