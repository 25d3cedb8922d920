"""Signing in through the setup link, the session cookie, the page's guards, signing out."""

import re

from playwright.sync_api import expect

from conftest import PASSWORD, password_form, screenshot


def test_a_person_sets_a_password_signs_in_and_out(org):
    olga = org.add_person("operator", "Olga Operator")
    page = org.context().new_page()

    # The setup link: the person chooses a password, then signs in on the form it leads to.
    page.goto(olga.setup_link)
    expect(page.get_by_role("heading", name="Choose a password")).to_be_visible()
    page.get_by_label("Password (12 characters or more)").fill(PASSWORD)
    page.get_by_label("The same again").fill(PASSWORD)
    page.get_by_role("button", name="Set password").click()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    form = password_form(page)
    expect(form.get_by_label("Organisation")).to_have_value(org.id)
    expect(form.get_by_label("Email")).to_have_value(olga.email)

    # A wrong password is refused on the page, saying so.
    form.get_by_label("Password", exact=True).fill("not the password at all")
    form.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert").filter(has_text="wrong email or password")).to_be_visible()
    screenshot(page, "sign_in")

    password_form(page).get_by_label("Password", exact=True).fill(PASSWORD)
    password_form(page).get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/leads")
    expect(page.get_by_role("heading", name="Leads")).to_be_visible()
    expect(page.locator("header.top")).to_contain_text(olga.email)

    # The session cookie cannot be read by scripts nor sent by other sites.
    cookies = {c["name"]: c for c in page.context.cookies()}
    session = cookies["leads_session"]
    assert session["httpOnly"] is True
    assert session["sameSite"] == "Strict"
    assert page.evaluate("document.cookie") == "", "no cookie is visible to scripts"

    # The list page allows scripts from this origin only, and no inline script.
    response = page.goto("/leads")
    assert response is not None and response.status == 200
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp, csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp, csp
    assert response.headers["x-frame-options"] == "DENY"

    # A change posted without the page's CSRF token is refused, the session cookie
    # notwithstanding: what a page of another site could make the browser send.
    refused = page.request.post("/leads/bulk", form={"status": "lost", "lead_ids": "anything"})
    assert refused.status == 403, refused.text()
    refused = page.request.post("/sign-out", form={})
    assert refused.status == 403
    forged = page.request.post("/sign-out", form={"_csrf": "x" * 24})
    assert forged.status == 403
    page.goto("/leads")
    expect(page.get_by_role("heading", name="Leads")).to_be_visible()

    # Signing out ends the session: the list asks for a sign-in again.
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url("**/sign-in")
    assert "leads_session" not in {c["name"] for c in page.context.cookies()}
    page.goto("/leads")
    page.wait_for_url("**/sign-in")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()


def test_the_one_click_link_signs_in_once(org):
    admin = org.add_person("admin", "Ann Admin")
    printed = org.platform.leads(
        "people", "sign-in-link", "--org", org.id, "--email", admin.email, "--console-url", org.platform.console
    )
    link = re.search(r"\S*/sign-in/code\?code=\S+", printed)
    assert link, printed
    page = org.context().new_page()
    page.goto(org.platform.url(link.group(0)))
    # Opening the link alone signs nobody in (a mail scanner may open it): the person confirms.
    assert "leads_session" not in {c["name"] for c in page.context.cookies()}
    page.get_by_role("button", name="Continue to the leads").click()
    page.wait_for_url("**/leads")
    expect(page.locator("header.top")).to_contain_text(f"{admin.email} · admin")

    # Used up: the same link again signs no one in.
    other = org.context().new_page()
    other.goto(org.platform.url(link.group(0)))
    other.get_by_role("button", name="Continue to the leads").click()
    expect(other.get_by_role("alert").filter(has_text="Ask for a new link.")).to_be_visible()
    expect(other.get_by_role("heading", name="Sign in")).to_be_visible()
    assert "leads_session" not in {c["name"] for c in other.context.cookies()}
