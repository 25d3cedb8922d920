"""A lead in a final status: readable, with its actions shown disabled and why."""

import re

from playwright.sync_api import expect

from conftest import open_drawer, phone, row, screenshot, wait_for_lead


def test_a_lost_lead_offers_no_action_and_keeps_its_history(org):
    page = org.sign_in(org.add_person("operator", "Olga Operator"))
    org.chat(phone(21), "Charles Babbage", "Is the engine still for sale?")
    wait_for_lead(page, "Charles Babbage")
    open_drawer(page, "Charles Babbage")
    form = page.locator("#change-status")
    form.get_by_label("Status").select_option(label="Lost")
    form.get_by_label("Reason").fill("went with a competitor")
    form.get_by_role("button", name="Save status").click()

    # The drawer: the reason it no longer changes, and the actions there but disabled.
    drawer = page.locator("#drawer")
    reason = "This lead is Lost: final, so it no longer changes."
    expect(drawer.locator("#inactive-notice")).to_contain_text(reason)
    expect(drawer.locator("#change-status")).to_have_count(0)
    actions = drawer.get_by_role("group", name="Actions")
    for name in ("Change status", "Assign", "Follow up"):
        expect(actions.get_by_role("button", name=name)).to_be_disabled()
    expect(actions).to_have_accessible_description(re.compile(re.escape(reason)))
    # Its history stays readable: the message that opened it and the change that closed it.
    timeline = drawer.locator(".timeline")
    expect(timeline).to_contain_text("went with a competitor")
    expect(timeline).to_contain_text("Is the engine still for sale?")

    # The row: no selection, and the menu says why nothing else is offered.
    charles = row(page, "Charles Babbage")
    expect(charles.locator(".badge")).to_have_text("Lost")
    box = charles.get_by_role("checkbox")
    expect(box).to_be_disabled()
    expect(box).to_have_accessible_name("Charles Babbage is Lost and cannot be changed")
    expect(box).to_have_attribute("title", reason)
    charles.get_by_text("Actions").click()
    disabled = charles.get_by_role("menuitem", name="Change status, assign, follow up: not for a Lost lead")
    expect(disabled).to_be_visible()
    expect(disabled).to_have_attribute("aria-disabled", "true")
    expect(disabled).to_have_attribute("title", reason)
    expect(charles.get_by_role("menuitem", name="History")).to_be_visible()
    screenshot(page, "inactive_lead")

    # Reached from the menu's History, on a page of its own.
    charles.get_by_role("menuitem", name="History").click()
    expect(page.locator("#drawer .timeline")).to_contain_text("went with a competitor")
    page.goto(page.url)
    expect(page.locator(".lead-detail #inactive-notice")).to_contain_text(reason)
    expect(page.locator(".lead-detail .timeline")).to_contain_text("went with a competitor")
