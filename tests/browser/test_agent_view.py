"""An agent sees its own leads and the unassigned ones, nobody else's."""

from playwright.sync_api import Page, expect

from conftest import phone, row, screenshot, wait_for_lead
from test_assign import add_agent


def assign(page: Page, name: str, agent_id: str) -> None:
    page.goto("/leads")
    row(page, name).get_by_role("checkbox").check()
    page.locator("#bulk").get_by_label("Agent").select_option(agent_id)
    page.locator("#bulk").get_by_role("button", name="Apply to selected").click()
    expect(page.locator("#bulk-results")).to_contain_text("1 changed")


def test_an_agent_sees_only_its_own_and_unassigned_leads(org):
    admin = org.sign_in(org.add_person("admin", "Ann Admin"))
    add_agent(admin, "ann", "Ann Smith")
    add_agent(admin, "bob", "Bob Jones")
    for n, name in enumerate(("Ada Lovelace", "Grace Hopper", "Alan Turing")):
        org.chat(phone(91 + n), name)
    for name in ("Ada Lovelace", "Grace Hopper", "Alan Turing"):
        wait_for_lead(admin, name)
    assign(admin, "Ada Lovelace", "ann")
    assign(admin, "Grace Hopper", "bob")
    admin.goto("/leads")
    grace_id = row(admin, "Grace Hopper").get_attribute("data-lead")

    ann = org.sign_in(org.add_person("agent", "Ann Smith", agent_id="ann"))
    expect(ann.locator("header.top")).to_contain_text("agent ann")
    names = sorted(ann.locator("#rows a.contact").all_inner_texts())
    assert names == ["Ada Lovelace", "Alan Turing"]
    expect(ann.locator("h1 .count")).to_have_text("2 leads")
    # An agent changes leads one at a time, and exports what it sees on its page only.
    expect(ann.get_by_role("link", name="Export all matching")).to_have_count(0)
    expect(ann.locator("#bulk-agent")).to_have_count(0)
    screenshot(ann, "agent_view")

    # Another agent's lead is not there for Ann, even by its address.
    answer = ann.goto(f"/leads/{grace_id}")
    assert answer is not None and answer.status == 404
    expect(ann.get_by_text("Grace Hopper")).to_have_count(0)
    ann.goto("/leads?q=grace")
    expect(ann.locator("#rows tr")).to_have_count(0)
