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
