"""A bulk status change answers per lead: one that closed meanwhile is refused as inactive."""

from playwright.sync_api import expect

from conftest import open_drawer, phone, row, screenshot, wait_for_lead


def test_a_bulk_change_refuses_the_lead_closed_in_the_meantime(org):
    olga = org.sign_in(org.add_person("operator", "Olga Operator"))
    org.chat(phone(41), "Ada Lovelace")
    org.chat(phone(42), "Grace Hopper")
    wait_for_lead(olga, "Ada Lovelace")
    wait_for_lead(olga, "Grace Hopper")
    ada_id = row(olga, "Ada Lovelace").get_attribute("data-lead")
    grace_id = row(olga, "Grace Hopper").get_attribute("data-lead")

    row(olga, "Ada Lovelace").get_by_role("checkbox").check()
    row(olga, "Grace Hopper").get_by_role("checkbox").check()
    expect(olga.locator("#selected-count")).to_have_text("2 selected.")

    # Olga's page stops hearing of changes (as if the change below lands between her
    # selection and her click, before the live update could reach her page).
    olga.evaluate("window.leadsLive.close()")

    # Meanwhile a colleague closes Grace's lead.
    peter = org.sign_in(org.add_person("operator", "Peter Operator"))
    open_drawer(peter, "Grace Hopper")
    peter.locator("#change-status").get_by_label("Status").select_option(label="Lost")
    peter.locator("#change-status").get_by_role("button", name="Save status").click()
    expect(peter.locator("#drawer #inactive-notice")).to_be_visible()

    olga.locator("#bulk").get_by_label("Status").select_option(label="Qualified")
    olga.locator("#bulk").get_by_label("Reason").fill("webinar attendees")
    olga.locator("#bulk").get_by_role("button", name="Apply to selected").click()

    results = olga.locator("#bulk-results")
    expect(results).to_contain_text("1 changed of 2 results.")
    outcomes = results.locator("tr.outcome")
    expect(outcomes).to_have_count(2)
    # Each result names its lead by the contact shown on the page, and links to it.
    expect(outcomes.filter(has_text="Ada Lovelace")).to_contain_text("status changed")
    expect(outcomes.filter(has_text="Grace Hopper")).to_contain_text("status refused: inactive")
    expect(outcomes.filter(has_text="Grace Hopper")).to_contain_text("its status is lost", ignore_case=True)
    expect(outcomes.filter(has_text="Ada Lovelace").get_by_role("link")).to_have_attribute("href", f"/leads/{ada_id}")
    expect(outcomes.filter(has_text="Grace Hopper").get_by_role("link")).to_have_attribute("href", f"/leads/{grace_id}")
    # The changed row shows its new status without a reload, though the live updates stopped.
    expect(row(olga, "Ada Lovelace")).to_contain_text("Qualified")
    screenshot(olga, "bulk_results")

    olga.goto("/leads")
    expect(row(olga, "Ada Lovelace").locator(".badge")).to_have_text("Qualified")
    expect(row(olga, "Grace Hopper").locator(".badge")).to_have_text("Lost")
