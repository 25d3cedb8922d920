"""Notifications and webhooks in the console: an agent assigned a lead sees it on the bell and
in its list (which htmx polls), opens the lead and marks it read; an admin creates a webhook
endpoint to a receiver on loopback, sees its secret once, and sees the delivery in its log."""

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from playwright.sync_api import Page, expect

from conftest import EVENTUAL, open_drawer, phone, screenshot, wait_for_lead
from test_accessibility import check
from test_assign import add_agent

# The bell and the list poll every 15 s: a notification shows within one poll of arriving.
POLLED = 45_000


def assign(page: Page, name: str, agent_id: str) -> None:
    """Assigns the contact's lead from its drawer, as a person does."""
    wait_for_lead(page, name)
    open_drawer(page, name)
    form = page.locator("#assign")
    form.get_by_label("Agent").select_option(agent_id)
    form.get_by_role("button", name="Save agent").click()
    expect(page.locator("#drawer .facts")).to_contain_text(agent_id)


def test_an_agent_sees_an_assigned_lead_on_the_bell_and_marks_it_read(org):
    admin = org.sign_in(org.add_person("admin", "Ann Admin"))
    add_agent(admin, "ann", "Ann Smith")
    agent = org.sign_in(org.add_person("agent", "Ann Smith", agent_id="ann"))
    bell = agent.locator("#bell")
    expect(bell).to_have_text("Notifications")

    org.chat(phone(141), "Ada Lovelace", "Please call me back.")
    assign(admin, "Ada Lovelace", "ann")

    # The agent's page, left alone, counts it on the bell: no reload.
    expect(bell.locator(".bell-count")).to_have_text("1 unread", timeout=POLLED)
    bell.click()
    agent.wait_for_url("**/notifications")
    item = agent.locator("li.notification").filter(has_text="Lead assigned to you: Ada Lovelace")
    expect(item).to_have_class("notification unread")
    expect(agent.locator("#notifications-unread")).to_have_text("1 unread")
    # In the reader's time zone, as the rest of the console shows times.
    expect(item.locator("time")).not_to_contain_text("UTC")
    screenshot(agent, "notifications")
    check(agent, "the notifications page")

    # Its link opens the lead's drawer, as the Leads page does.
    item.get_by_role("link", name="Open the lead").click()
    expect(agent.locator("#drawer h2#drawer-title")).to_have_text("Ada Lovelace")

    agent.goto("/notifications")
    item = agent.locator("li.notification").filter(has_text="Lead assigned to you: Ada Lovelace")
    item.get_by_role("button", name="Mark read").click()
    expect(item).to_have_class("notification read")
    expect(agent.locator("#notifications-unread")).to_have_text("none unread")
    expect(agent.locator("#bell .bell-count")).to_have_count(0)

    # The admin reads the agent's list too, and it is read there as well.
    admin.goto("/notifications")
    expect(admin.get_by_role("heading", name="The admins' notifications")).to_be_visible()
    admin.get_by_label("Whose", exact=True).select_option("ann")
    admin.get_by_role("button", name="Show").click()
    expect(admin.locator("li.notification.read")).to_contain_text("Lead assigned to you: Ada Lovelace")


class Receiver:
    """A webhook receiver on loopback that keeps what it is sent and answers 204."""

    def __init__(self) -> None:
        self.received: list[dict] = []
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (the standard library's name)
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                received.append({
                    "id": self.headers.get("webhook-id"),
                    "signature": self.headers.get("webhook-signature"),
                    "body": json.loads(body or b"{}"),
                })
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/leads"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait_for(self, count: int) -> list[dict]:
        end = time.monotonic() + EVENTUAL / 1000
        while len(self.received) < count:
            if time.monotonic() > end:
                raise AssertionError(f"the receiver got {len(self.received)} of {count} deliveries")
            time.sleep(0.1)
        return self.received

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_an_admin_creates_a_webhook_endpoint_sees_its_secret_once_and_a_delivery(org):
    receiver = Receiver()
    try:
        page = org.sign_in(org.add_person("admin", "Ann Admin"))
        page.goto("/settings")
        page.get_by_role("link", name="webhooks").click()
        page.wait_for_url("**/webhooks")
        expect(page.get_by_role("heading", name="Webhooks", level=1)).to_be_visible()

        page.get_by_label("URL").fill(receiver.url)
        page.get_by_label("Description").fill("CRM")
        page.get_by_label("lead.assigned").check()
        page.get_by_role("button", name="Create endpoint").click()
        secret = page.locator("#new-secret")
        expect(secret).to_contain_text("not shown again")
        expect(secret.locator(".secret-value")).to_have_text(re.compile(r"^whsec_\S+$"))
        screenshot(page, "webhook_created")
        check(page, "the webhooks page with a new secret")

        # Shown once: not on the list read again.
        page.goto("/webhooks")
        expect(page.locator("#new-secret")).to_have_count(0)
        endpoint_row = page.locator("tr[data-endpoint]").filter(has_text=receiver.url)
        expect(endpoint_row.locator(".endpoint-state")).to_have_text("enabled")
        expect(endpoint_row).to_contain_text("lead.assigned")

        add_agent(page, "ann", "Ann Smith")
        org.chat(phone(151), "Grace Hopper", "What does it cost?")
        assign(page, "Grace Hopper", "ann")
        delivered = receiver.wait_for(1)[0]
        assert delivered["body"]["type"] == "lead.assigned", delivered
        assert delivered["signature"].startswith("v1,"), delivered

        # The delivery in the endpoint's log, with the message's id.
        page.goto("/webhooks")
        page.get_by_role("link", name=receiver.url).click()
        end = time.monotonic() + EVENTUAL / 1000
        while page.locator("table.attempts tr.delivered").count() == 0:
            assert time.monotonic() < end, "no delivered attempt in the log"
            page.wait_for_timeout(250)
            page.reload()
        attempt = page.locator("table.attempts tr.delivered").first
        expect(attempt).to_contain_text(delivered["id"])
        expect(attempt).to_contain_text("204")
        screenshot(page, "webhook_log")
        check(page, "a webhook endpoint's page")

        # Delivered again on request, with its own id.
        page.get_by_label("Message id").fill(delivered["id"])
        page.get_by_role("button", name="Replay message").click()
        expect(page.locator("#webhook-notice")).to_have_text("1 message queued again.")
        again = receiver.wait_for(2)[1]
        assert again["id"] == delivered["id"], "a replay keeps the message's id"
    finally:
        receiver.stop()
