"""Agents added by an admin on the Agents page; a lead assigned and reassigned from its drawer."""

from playwright.sync_api import Page, expect

from conftest import open_drawer, phone, row, screenshot, wait_for_lead


def add_agent(page: Page, agent_id: str, name: str) -> None:
    page.goto("/agents")
    form = page.locator("form.add-agent")
    form.get_by_label("Agent id").fill(agent_id)
    form.get_by_label("Name").fill(name)
    form.get_by_role("button", name="Add agent").click()
    page.wait_for_url("**/agents")
    expect(agent_line(page, agent_id)).to_contain_text(name)


def agent_line(page: Page, agent_id: str):
    """The agent's row of the Agents page (its details are in the row under it)."""
    return page.locator(f"tbody#agent-{agent_id} > tr").first


def test_a_lead_is_assigned_then_reassigned_from_the_drawer(org):
    page = org.sign_in(org.add_person("admin", "Ann Admin"))
    add_agent(page, "ann", "Ann Smith")
    add_agent(page, "bob", "Bob Jones")
    expect(agent_line(page, "ann")).to_contain_text("active")
    screenshot(page, "agents")

    org.chat(phone(31), "Ada Lovelace", "Can someone call me back?")
    wait_for_lead(page, "Ada Lovelace")
    open_drawer(page, "Ada Lovelace")
    assign = page.locator("#assign")
    agents = assign.get_by_label("Agent")
    expect(agents.locator("option")).to_have_text(["Unassigned", "Ann Smith (0 open)", "Bob Jones (0 open)"])
    agents.select_option("ann")
    assign.get_by_label("Reason").fill("speaks Italian")
    assign.get_by_role("button", name="Save agent").click()

    drawer = page.locator("#drawer")
    expect(drawer.locator(".facts")).to_contain_text("ann")
    expect(row(page, "Ada Lovelace").locator("td").nth(4)).to_have_text("ann")
    expect(drawer.locator("#assign").get_by_label("Agent")).to_have_value("ann")
    expect(drawer.locator("#assign option[value=ann]")).to_have_text("Ann Smith (1 open)")

    # Reassigned: the row follows, and the history keeps both.
    drawer.locator("#assign").get_by_label("Agent").select_option("bob")
    drawer.locator("#assign").get_by_label("Reason").fill("Ann is away")
    drawer.locator("#assign").get_by_role("button", name="Save agent").click()
    expect(row(page, "Ada Lovelace").locator("td").nth(4)).to_have_text("bob")
    expect(drawer.locator(".facts")).to_contain_text("bob")
    expect(drawer.locator(".timeline")).to_contain_text("speaks Italian")
    expect(drawer.locator(".timeline")).to_contain_text("Ann is away")
    drawer.locator("#assign").scroll_into_view_if_needed()
    screenshot(page, "assign")

    # The list filters by the agent now holding it.
    page.goto("/leads?agent=bob")
    expect(row(page, "Ada Lovelace")).to_have_count(1)
    page.goto("/leads?agent=ann")
    expect(row(page, "Ada Lovelace")).to_have_count(0)
