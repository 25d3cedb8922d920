"""An admin turns a status rule on in Settings; the lead then moves by itself and its
timeline names the rule."""

from playwright.sync_api import expect

from conftest import open_drawer, phone, screenshot, wait_for_lead


def test_a_rule_turned_on_in_settings_moves_the_lead_and_the_timeline_names_it(org):
    page = org.sign_in(org.add_person("admin", "Ann Admin"))
    org.chat(phone(81), "Ada Lovelace", "Please call me back on Monday.")
    wait_for_lead(page, "Ada Lovelace")

    page.get_by_role("link", name="Settings").click()
    expect(page.get_by_role("heading", name="Settings", level=1)).to_be_visible()
    page.get_by_label("Opening a follow-up moves the lead to Follow-up").check()
    page.get_by_role("button", name="Save settings").click()
    expect(page.get_by_role("table").filter(has_text="follow_up_status: off -> on")).to_be_visible()
    screenshot(page, "settings")

    page.goto("/leads")
    open_drawer(page, "Ada Lovelace")
    form = page.locator("#follow-up")
    form.get_by_label("Note").fill("call back on Monday")
    form.get_by_role("button", name="Create follow-up").click()
    expect(page.locator("#drawer ul.follow-ups li")).to_contain_text("call back on Monday")

    # The drawer again, as it now is: moved by the rule, which its timeline names.
    page.goto("/leads")
    open_drawer(page, "Ada Lovelace")
    expect(page.locator("#drawer .badge")).to_have_text("Follow-up")
    expect(page.locator("#drawer")).to_contain_text("by rule follow_up_opened")
