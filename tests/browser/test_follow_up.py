"""A follow-up created from a lead's drawer, its contact filled in."""

import re
from datetime import datetime, timedelta, timezone

from playwright.sync_api import expect

from conftest import open_drawer, phone, screenshot, wait_for_lead


def test_a_follow_up_is_created_from_the_drawer(org):
    page = org.sign_in(org.add_person("operator", "Olga Operator"))
    org.chat(phone(71), "Grace Hopper", "Call me next week about the contract.")
    wait_for_lead(page, "Grace Hopper")
    open_drawer(page, "Grace Hopper")

    form = page.locator("#follow-up")
    contact = form.get_by_label("Contact")
    expect(contact).to_have_value(f"Grace Hopper {phone(71)}")
    expect(contact).to_have_attribute("readonly", "")
    tomorrow = (datetime.now(timezone.utc) + timedelta(days=1)).strftime("%Y-%m-%d")
    expect(form.get_by_label(re.compile(r"^Due"))).to_have_value(f"{tomorrow}T09:00")
    # The page's script says which time zone the due time is read in.
    expect(form.locator("[data-tz-name]")).to_have_text("UTC")

    due = (datetime.now(timezone.utc) + timedelta(days=3)).strftime("%Y-%m-%d")
    form.get_by_label(re.compile(r"^Due")).fill(f"{due}T14:30")
    form.get_by_label("Note").fill("send the contract draft")
    form.get_by_role("button", name="Create follow-up").click()

    follow_ups = page.locator("#drawer ul.follow-ups li")
    expect(follow_ups).to_have_count(1)
    expect(follow_ups).to_contain_text("send the contract draft")
    expect(follow_ups.locator("time")).to_have_attribute("datetime", f"{due}T14:30:00Z")
    follow_ups.scroll_into_view_if_needed()
    screenshot(page, "follow_up")

    # Still there when the drawer is opened again.
    page.goto("/leads")
    open_drawer(page, "Grace Hopper")
    expect(page.locator("#drawer ul.follow-ups li")).to_contain_text("send the contract draft")
