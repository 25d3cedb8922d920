"""A lead that a chat message opens shows up on an open list by itself."""

from playwright.sync_api import expect

from conftest import live, phone, row, screenshot, wait_for_lead


def test_a_new_lead_is_announced_and_shown_on_click(org):
    page = org.sign_in(org.add_person("operator", "Olga Operator"))
    org.chat(phone(1), "Ada Lovelace", "Hi, how much is the premium plan?")
    wait_for_lead(page, "Ada Lovelace")
    live(page)

    # Published while the list is open: the page announces it without a reload.
    org.chat(phone(2), "Grace Hopper", "Do you ship to Canada?")
    notice = page.locator("#new-leads")
    expect(notice).to_be_visible()
    expect(notice).to_have_text("1 new lead: show")
    expect(row(page, "Grace Hopper")).to_have_count(0)
    screenshot(page, "new_leads_notice")

    notice.click()
    expect(row(page, "Grace Hopper")).to_have_count(1)
    expect(row(page, "Grace Hopper")).to_contain_text("New")
    expect(row(page, "Grace Hopper")).to_contain_text(phone(2))
    expect(page.locator("#live")).to_be_hidden()
