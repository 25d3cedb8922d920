"""axe-core on every page a person works in: no serious or critical violation."""

from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Page, expect

from conftest import open_drawer, phone, row, screenshot, wait_for_lead
from test_assign import add_agent

AXE = Axe()


def serious_violations(page: Page) -> list[str]:
    results = AXE.run(page)
    found = []
    for violation in results.response["violations"]:
        if violation.get("impact") in ("serious", "critical"):
            targets = [" ".join(node["target"]) for node in violation["nodes"]][:5]
            found.append(f"{violation['id']} ({violation['impact']}): {violation['help']} at {targets}")
    return found


def check(page: Page, what: str) -> None:
    found = serious_violations(page)
    assert not found, f"{what}:\n" + "\n".join(found)


def test_the_pages_have_no_serious_accessibility_violation(org):
    admin_person = org.add_person("admin", "Ann Admin")
    page = org.context().new_page()
    page.goto("/sign-in")
    check(page, "the sign-in page")
    page.goto(admin_person.setup_link)
    check(page, "the set-password page")

    page = org.sign_in(admin_person, page.context)
    add_agent(page, "ann", "Ann Smith")
    check(page, "the agents page")

    message = f"wamid.{org.id}.7"
    org.platform.publish(org.id, "messages", {
        "message_id": message,
        "occurred_at": "2026-11-24T09:00:00Z",
        "campaign": {"id": "cmp-7", "name": "Winter sale"},
        "template": {"name": "winter", "language": "en_GB", "category": "MARKETING"},
        "contact": {"phone": phone(121)},
    })
    org.chat(phone(121), "Ada Lovelace", "Yes please!", kind="broadcast_reply",
             broadcast={"message_id": message, "campaign_id": "cmp-7"})
    org.chat(phone(122), "Grace Hopper", "What does it cost?")
    wait_for_lead(page, "Ada Lovelace")
    wait_for_lead(page, "Grace Hopper")
    open_drawer(page, "Grace Hopper")
    page.locator("#change-status").get_by_label("Status").select_option(label="Lost")
    page.locator("#change-status").get_by_role("button", name="Save status").click()
    expect(page.locator("#drawer #inactive-notice")).to_be_visible()

    page.goto("/leads")
    check(page, "the list page")
    row(page, "Grace Hopper").get_by_text("Actions").click()
    check(page, "the list page with an inactive lead's menu open")
    open_drawer(page, "Ada Lovelace")
    check(page, "the drawer of an active lead")
    page.goto("/leads")
    open_drawer(page, "Grace Hopper")
    check(page, "the drawer of an inactive lead")

    page.goto("/campaigns")
    expect(page.get_by_role("row").filter(has_text="Winter sale")).to_be_visible()
    check(page, "the campaigns page")
    screenshot(page, "campaigns")
    page.goto("/qualification")
    check(page, "the qualification page")
    page.goto("/settings")
    check(page, "the settings page")
