"""The Agents page and the skill routes in Settings: presence set with the switch (and as the
assignment service lists it), capacity edited in an agent's details, the queue of leads waiting
for an agent, and skill routes an admin edits and an operator only reads."""

import time

from playwright.sync_api import Page, expect

from conftest import EVENTUAL, lead_id_of, phone, screenshot, wait_for_lead
from grpc_probe import list_agents
from test_accessibility import check
from test_assign import add_agent


def agent_row(page: Page, agent_id: str):
    """The agent's block of the table: its row and its details under it."""
    return page.locator(f"tbody#agent-{agent_id}")


def reload_until(page: Page, path: str, done, what: str) -> None:
    """Reloads `path` until `done(page)` holds: the page shows what is, not what comes."""
    end = time.monotonic() + EVENTUAL / 1000
    while True:
        page.goto(path)
        if done(page):
            return
        if time.monotonic() > end:
            raise AssertionError(f"{what}: not on {path} in time")
        page.wait_for_timeout(250)


def listed_presence(org, agent_id: str) -> str:
    return list_agents(org.platform, org.id)[agent_id]["presence"]


def test_each_presence_shows_on_the_page_and_as_the_assignment_service_lists_it(org):
    page = org.sign_in(org.add_person("admin", "Ann Admin"))
    add_agent(page, "ann", "Ann Smith")
    add_agent(page, "bob", "Bob Jones")
    ann = agent_row(page, "ann")
    for choice in ("available", "away", "offline"):
        ann.get_by_role("button", name=f"Set ann {choice}").click()
        expect(ann.locator(".presence")).to_have_text(choice)
        expect(ann.get_by_role("button", name=f"Set ann {choice}")).to_have_attribute("aria-pressed", "true")
        expect(ann.locator('button[aria-pressed="true"]')).to_have_count(1)
        assert listed_presence(org, "ann") == choice
    assert listed_presence(org, "bob") == "offline", "only ann's presence changed"
    screenshot(page, "agents_presence")

    # An agent switches its own presence only.
    agent_page = org.sign_in(org.add_person("agent", "Ann Smith", agent_id="ann"))
    agent_page.goto("/agents")
    expect(agent_row(agent_page, "bob").get_by_role("button", name="Set bob available")).to_have_count(0)
    agent_row(agent_page, "ann").get_by_role("button", name="Set ann available").click()
    expect(agent_row(agent_page, "ann").locator(".presence")).to_have_text("available")
    assert listed_presence(org, "ann") == "available"


def test_an_admin_edits_an_agents_capacity_in_its_details(org):
    page = org.sign_in(org.add_person("admin", "Ann Admin"))
    add_agent(page, "ann", "Ann Smith")
    ann = agent_row(page, "ann")
    details = ann.locator("details")
    expect(details).not_to_have_attribute("open", "")
    expect(ann.get_by_label("Capacity")).to_be_hidden()
    ann.locator("summary").click()
    ann.get_by_label("Capacity").fill("3")
    ann.get_by_role("button", name="Set capacity").click()

    # Back on the page with the agent's details still open, showing the new capacity.
    expect(ann.locator("details")).to_have_attribute("open", "")
    expect(ann.get_by_label("Capacity")).to_have_value("3")
    expect(ann.get_by_role("row").first).to_contain_text("0 of 3")
    expect(ann.locator("summary")).to_contain_text("capacity 3")
    listed = list_agents(org.platform, org.id)["ann"]
    assert (listed["capacity"], listed["effective_capacity"]) == (3, 3)
    check(page, "the agents page with an agent's details open")
    screenshot(page, "agents_details")

    ann.get_by_label("Capacity").fill("")
    ann.get_by_role("button", name="Set capacity").click()
    expect(ann.locator("summary")).to_contain_text("(the default)")
    assert list_agents(org.platform, org.id)["ann"]["capacity"] is None


def test_a_lead_waits_in_the_queue_until_an_agent_becomes_available(org):
    page = org.sign_in(org.add_person("admin", "Ann Admin"))
    add_agent(page, "ann", "Ann Smith")
    agent_row(page, "ann").get_by_role("button", name="Set ann offline").click()
    expect(page.get_by_role("heading", name="Waiting for an agent (0)")).to_be_visible()
    page.goto("/settings")
    page.get_by_label("Balanced", exact=False).check()
    page.get_by_role("button", name="Save assignment").click()
    expect(page.get_by_role("table").filter(has_text="policy: off -> balanced")).to_be_visible()

    org.chat(phone(141), "Ada Lovelace", "Can someone help me?")
    wait_for_lead(page, "Ada Lovelace")
    lead_id = lead_id_of(page, "Ada Lovelace")
    waiting = f'table.waiting tr[data-lead="{lead_id}"]'
    reload_until(page, "/agents", lambda p: p.locator(waiting).count() == 1, "the lead waiting")
    expect(page.get_by_role("heading", name="Waiting for an agent (1)")).to_be_visible()
    expect(page.locator(waiting)).to_contain_text("an available agent with room")
    check(page, "the agents page with a lead waiting")
    screenshot(page, "agents_waiting")

    agent_row(page, "ann").get_by_role("button", name="Set ann available").click()
    reload_until(page, "/agents", lambda p: p.locator(waiting).count() == 0, "the lead handed out")
    expect(page.get_by_text("No lead is waiting.")).to_be_visible()
    expect(agent_row(page, "ann").get_by_role("row").first).to_contain_text("1 of 10")


def test_an_admin_edits_the_skill_routes_and_an_operator_only_reads_them(org):
    page = org.sign_in(org.add_person("admin", "Ann Admin"))
    page.goto("/settings")
    routes = page.locator('form[action="/settings/skill-routes"]')
    expect(routes.get_by_text("Only an admin can change these.")).to_have_count(0)
    routes.get_by_label("Channel or source of route 1").fill("whatsapp")
    routes.get_by_label("Skill of route 1").fill("whatsapp")
    routes.get_by_label("Channel or source of route 2").fill("integration:shop")
    routes.get_by_label("Skill of route 2").fill("shop")
    routes.get_by_role("button", name="Save skill routes").click()
    added = "skill_routes: none -> whatsapp => whatsapp, integration:shop => shop"
    expect(page.get_by_role("table").filter(has_text=added)).to_be_visible()
    expect(routes.get_by_label("Skill of route 2")).to_have_value("shop")
    expect(routes.get_by_label("Channel or source of route 3")).to_have_value("")

    # Refused by the service: the form as sent, the words beside the field, which has focus.
    routes.get_by_label("Skill of route 2").fill("Not A Skill")
    routes.get_by_role("button", name="Save skill routes").click()
    refused = routes.get_by_label("Skill of route 2")
    expect(refused).to_have_value("Not A Skill")
    expect(refused).to_have_attribute("aria-invalid", "true")
    expect(refused).to_be_focused()
    expect(routes.locator("#skill-routes-error")).to_contain_text('skill_routes.skill: "Not A Skill"')
    expect(routes.get_by_label("Channel or source of route 2")).not_to_have_attribute("aria-invalid", "true")
    check(page, "the settings page with a refused skill route")
    screenshot(page, "skill_routes_refused")

    # Removing a route: both its fields emptied.
    refused.fill("")
    routes.get_by_label("Channel or source of route 2").fill("")
    routes.get_by_role("button", name="Save skill routes").click()
    removed = "integration:shop => shop -> whatsapp => whatsapp"
    expect(page.get_by_role("table").filter(has_text=removed)).to_be_visible()

    operator = org.sign_in(org.add_person("operator", "Olga Operator"))
    operator.goto("/settings")
    read = operator.locator('form[action="/settings/skill-routes"]')
    expect(read.get_by_text("Only an admin can change these.")).to_be_visible()
    expect(read.get_by_label("Channel or source of route 1")).to_have_value("whatsapp")
    expect(read.get_by_label("Channel or source of route 1")).to_be_disabled()
    expect(read.get_by_label("Channel or source of route 2")).to_have_count(0)
    expect(read.get_by_role("button", name="Save skill routes")).to_have_count(0)
    read.scroll_into_view_if_needed()
    screenshot(operator, "skill_routes_operator")

    agent = org.sign_in(org.add_person("agent", "Ann Smith", agent_id="ann"))
    expect(agent.get_by_role("link", name="Settings")).to_have_count(0)
