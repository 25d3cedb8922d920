"""The list page's weight: what a browser transfers to show a full page of leads."""

from playwright.sync_api import Request, expect

from conftest import phone, screenshot, wait_for_lead

LEADS = 50  # a full page at the default page size
BUDGET = 150 * 1024


def test_a_full_list_page_transfers_under_150_kb(org):
    page = org.sign_in(org.add_person("operator", "Olga Operator"))
    for n in range(LEADS):
        org.chat(phone(600 + n), f"Contact number {n:02d}", f"Hello, I would like a quote for order {n}, please.")
    wait_for_lead(page, f"Contact number {LEADS - 1:02d}")
    wait_for_lead(page, "Contact number 00")

    # A browser with nothing cached, holding the session, opens the list first thing.
    cold = org.context()
    cold.add_cookies(page.context.cookies())
    fresh = cold.new_page()
    finished: list[Request] = []
    fresh.on("requestfinished", lambda request: finished.append(request))
    # The header's bell asks for its unread count as the page loads: part of the page's weight.
    with fresh.expect_response(lambda response: response.url.endswith("/notifications/bell")):
        fresh.goto("/leads", wait_until="load")
    expect(fresh.locator("#rows tr")).to_have_count(LEADS)
    expect(fresh.locator("body")).to_have_attribute("data-live", "open")

    sizes = {}
    for request in finished:
        # The live stream is not part of the page: it stays open, and carries changes later.
        if request.url.endswith("/leads/live"):
            continue
        measured = request.sizes()
        sizes[request.url] = measured["responseBodySize"] + measured["responseHeadersSize"]
    paths = sorted(url.removeprefix(org.platform.console) for url in sizes)
    assert paths == [
        "/assets/console.css", "/assets/console.js", "/assets/htmx.min.js", "/leads", "/notifications/bell",
    ], paths
    total = sum(sizes.values())
    print(f"the list page with {LEADS} leads transfers {total} bytes: {sizes}")
    assert total < BUDGET, f"{total} bytes: {sizes}"
    screenshot(fresh, "leads")
