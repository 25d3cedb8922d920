"""Changing a lead's status with a score set by hand, then handing the score back to AI."""

import re

from playwright.sync_api import expect

from conftest import open_drawer, phone, row, screenshot, wait_for_lead


def test_a_manual_score_shows_on_the_row_until_handed_back(org):
    page = org.sign_in(org.add_person("operator", "Olga Operator"))
    org.chat(phone(11), "Ada Lovelace", "Hi, how much is the premium plan? We need 40 seats.")
    wait_for_lead(page, "Ada Lovelace")
    open_drawer(page, "Ada Lovelace")
    lead_id = row(page, "Ada Lovelace").get_attribute("data-lead")
    page.wait_for_url(f"**/leads/{lead_id}")

    form = page.locator("#change-status")
    form.get_by_label("Status").select_option(label="Qualified")
    form.get_by_label("Score by hand (0-100)").fill("80")
    form.get_by_label("Reason").fill("budget confirmed on the phone")
    form.get_by_role("button", name="Save status").click()

    # The drawer and the list's row both show the change, the score marked as set by hand.
    drawer = page.locator("#drawer")
    expect(drawer.locator(".facts")).to_contain_text("Qualified")
    expect(drawer.locator(".facts")).to_contain_text(re.compile(r"80\s+manual"))
    ada = row(page, "Ada Lovelace")
    expect(ada.locator(".badge")).to_have_text("Qualified")
    expect(ada.locator("td.num")).to_have_text(re.compile(r"^\s*80\s+manual\s*$"))
    expect(drawer.locator(".timeline")).to_contain_text("budget confirmed on the phone")
    screenshot(page, "status_manual_score")

    # Handing it back: the score is the engine's again, its own number once it has scored.
    page.locator("#change-status").get_by_label("Hand the score back to AI").check()
    page.locator("#change-status").get_by_role("button", name="Save status").click()
    expect(ada.locator("td.num")).not_to_contain_text("manual")
    # The engine's score, with its most important reason under it.
    expect(ada.locator("td.num")).to_have_text(re.compile(r"^\s*\d+\s+AI\b"))
    expect(ada.locator("td.num .top-reason")).not_to_be_empty()
    expect(ada.locator(".badge")).to_have_text("Qualified")
    page.goto("/leads")
    expect(row(page, "Ada Lovelace").locator("td.num")).to_have_text(re.compile(r"^\s*\d+\s+AI\b"))
    page.goto(f"/leads/{lead_id}")
    expect(page.locator(".lead-detail .facts")).to_contain_text(re.compile(r"\d+\s+AI"))
    expect(page.locator(".lead-detail .timeline")).to_contain_text("budget confirmed on the phone")
