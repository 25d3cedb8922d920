"""Rows follow changes made elsewhere, and a page that lost its connection misses none."""

from playwright.sync_api import Page, expect

from conftest import live, open_drawer, phone, row, screenshot, wait_for_lead


def set_status(page: Page, name: str, status: str) -> None:
    """Another person's change, made from their own drawer."""
    page.goto("/leads")
    open_drawer(page, name)
    page.locator("#change-status").get_by_label("Status").select_option(label=status)
    page.locator("#change-status").get_by_role("button", name="Save status").click()
    expect(page.locator("#drawer .facts .badge")).to_have_text(status)


def test_rows_change_in_place_and_nothing_is_missed_while_disconnected(org):
    olga = org.sign_in(org.add_person("operator", "Olga Operator"))
    peter = org.sign_in(org.add_person("operator", "Peter Operator"))
    for n, name in enumerate(("Ada Lovelace", "Grace Hopper", "Alan Turing")):
        org.chat(phone(81 + n), name)
    for name in ("Ada Lovelace", "Grace Hopper", "Alan Turing"):
        wait_for_lead(olga, name)
    live(olga)
    ada = row(olga, "Ada Lovelace")
    # A mark on the page that a reload would drop: the updates below must come without one.
    olga.evaluate("document.body.dataset.sincePageLoad = 'yes'")

    set_status(peter, "Ada Lovelace", "Qualified")
    expect(ada.locator(".badge")).to_have_text("Qualified")
    expect(ada).to_have_class("updated")
    assert olga.evaluate("document.body.dataset.sincePageLoad") == "yes", "no reload"
    screenshot(olga, "live_row_update")

    # Olga's page stops following (its stream closed, as a dropped connection leaves it);
    # Peter goes on changing leads meanwhile, and a new contact writes.
    olga.evaluate("window.leadsLive.close()")
    set_status(peter, "Grace Hopper", "Contacted")
    set_status(peter, "Alan Turing", "Lost")
    org.chat(phone(99), "Katherine Johnson", "Hello from a new contact")
    wait_for_lead(peter, "Katherine Johnson")
    expect(row(olga, "Grace Hopper").locator(".badge")).to_have_text("New")
    expect(olga.locator("#live")).to_be_hidden()

    # Reconnected: every change made meanwhile shows, and the page follows again.
    olga.reload()
    live(olga)
    expect(row(olga, "Grace Hopper").locator(".badge")).to_have_text("Contacted")
    expect(row(olga, "Alan Turing").locator(".badge")).to_have_text("Lost")
    expect(row(olga, "Alan Turing").get_by_role("checkbox")).to_be_disabled()
    expect(row(olga, "Katherine Johnson")).to_have_count(1)
    set_status(peter, "Ada Lovelace", "Converted")
    expect(row(olga, "Ada Lovelace").locator(".badge")).to_have_text("Converted")
    expect(row(olga, "Ada Lovelace").get_by_role("checkbox")).to_be_disabled()
