"""One timeline per contact: a past lead, status changes, and the broadcasts sent to them with
their delivery steps."""

from datetime import datetime, timedelta, timezone

from playwright.sync_api import expect

from conftest import open_drawer, phone, row, screenshot, wait_for_lead


def at(seconds_ago: int) -> str:
    return (datetime.now(timezone.utc) - timedelta(seconds=seconds_ago)).isoformat().replace("+00:00", "Z")


def test_a_returning_contact_shows_its_past_lead_and_broadcast_timeline(org):
    page = org.sign_in(org.add_person("operator", "Olga Operator"))
    ada = phone(61)
    message = f"wamid.{org.id}.1"

    # A broadcast reaches Ada, is delivered and read; she replies to it.
    org.platform.publish(org.id, "messages", {
        "message_id": message,
        "occurred_at": at(300),
        "campaign": {"id": "cmp-bf", "name": "Black Friday"},
        "template": {"name": "bf_offer", "language": "en_US", "category": "MARKETING"},
        "contact": {"phone": ada},
    })
    for seconds_ago, status in ((299, "sent"), (290, "delivered"), (200, "read")):
        org.platform.publish(org.id, "statuses", {"message_id": message, "status": status, "timestamp": at(seconds_ago)})
    org.chat(ada, "Ada Lovelace", "Is the Black Friday price still on?", kind="broadcast_reply",
             broadcast={"message_id": message, "campaign_id": "cmp-bf"})
    wait_for_lead(page, "Ada Lovelace")
    first_id = row(page, "Ada Lovelace").get_attribute("data-lead")
    expect(row(page, "Ada Lovelace")).to_contain_text("Broadcast reply")

    # The lead is lost; later the same phone writes again and opens a new lead.
    open_drawer(page, "Ada Lovelace")
    page.locator("#change-status").get_by_label("Status").select_option(label="Contacted")
    page.locator("#change-status").get_by_role("button", name="Save status").click()
    expect(page.locator("#drawer .facts")).to_contain_text("Contacted")
    page.locator("#change-status").get_by_label("Status").select_option(label="Lost")
    page.locator("#change-status").get_by_label("Reason").fill("no budget this year")
    page.locator("#change-status").get_by_role("button", name="Save status").click()
    expect(page.locator("#drawer #inactive-notice")).to_be_visible()

    org.chat(ada, "Ada Lovelace", "We have budget now, can we talk?")
    wait_for_lead(page, "Ada Lovelace", "?active=active")
    second_id = row(page, "Ada Lovelace").get_attribute("data-lead")
    assert second_id != first_id
    open_drawer(page, "Ada Lovelace")

    drawer = page.locator("#drawer")
    expect(drawer.get_by_text("Past leads of this contact:")).to_be_visible()
    expect(drawer.get_by_role("link", name=first_id)).to_be_visible()
    timeline = drawer.locator(".timeline")
    # The past lead's status changes, marked as that lead's.
    changes = timeline.locator("li").filter(has_text="status changed")
    expect(changes.filter(has_text="contacted -> lost")).to_contain_text("no budget this year")
    expect(changes.filter(has_text="contacted -> lost")).to_contain_text(f"(lead {first_id})")
    expect(changes.filter(has_text="new -> contacted")).to_have_count(1)
    # The broadcast: its campaign, template and each delivery step.
    broadcast = timeline.locator("li.kind-broadcast")
    expect(broadcast).to_have_count(1)
    expect(broadcast).to_contain_text("Black Friday / bf_offer: read")
    expect(broadcast.locator("dl.details")).to_contain_text("cmp-bf")
    expect(broadcast.locator("dl.details")).to_contain_text("en_US")
    steps = broadcast.locator("dt", has_text="timeline").locator("xpath=following-sibling::dd[1]")
    for step in ("sent", "delivered", "read"):
        expect(steps).to_contain_text(step)
    # Each step reads as words and a time, not as the record it was made from.
    expect(steps).not_to_contain_text('"at":')
    expect(timeline).to_contain_text("We have budget now, can we talk?")
    expect(timeline).to_contain_text("Is the Black Friday price still on?")
    broadcast.scroll_into_view_if_needed()
    screenshot(page, "history")

    # The past lead opens from the link, still readable.
    drawer.get_by_role("link", name=first_id).click()
    expect(page.locator("#drawer #inactive-notice")).to_contain_text("Lost")
    expect(page.locator("#drawer .timeline")).to_contain_text("no budget this year")
