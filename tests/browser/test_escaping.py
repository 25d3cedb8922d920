"""What contacts send is shown as text: markup in a name runs nothing, wherever it shows."""

from playwright.sync_api import expect

from conftest import live, open_drawer, phone, row, screenshot

HOSTILE = "<img src=x onerror=alert(1)>"


def test_a_contact_named_with_markup_shows_as_text(org):
    page = org.sign_in(org.add_person("operator", "Olga Operator"))
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    errors: list[str] = []
    page.on("console", lambda message: errors.append(f"{message.text} {message.location}") if message.type == "error" else None)
    live(page)

    # Arriving live: the notice, then the list.
    org.chat(phone(111), HOSTILE, '"><script>alert(2)</script>')
    expect(page.locator("#new-leads")).to_have_text("1 new lead: show")
    page.locator("#new-leads").click()
    hostile = row(page, HOSTILE)
    expect(hostile).to_have_count(1)
    expect(hostile.locator("a.contact")).to_have_text(HOSTILE)
    assert page.locator("img[src=x]").count() == 0

    # In the drawer: the heading, the last message and the follow-up form.
    open_drawer(page, HOSTILE)
    drawer = page.locator("#drawer")
    expect(drawer.locator(".facts")).to_contain_text('"><script>alert(2)</script>')
    expect(drawer.locator("#follow-up").get_by_label("Contact")).to_have_value(f"{HOSTILE} {phone(111)}")

    # Changed in place through the live stream: the row comes as markup from the server.
    page.locator("#change-status").get_by_label("Status").select_option(label="Qualifying")
    page.locator("#change-status").get_by_role("button", name="Save status").click()
    expect(hostile.locator(".badge")).to_have_text("Qualifying")
    expect(hostile.locator("a.contact")).to_have_text(HOSTILE)
    screenshot(page, "escaping")

    assert page.locator("img[src=x]").count() == 0
    assert page.locator("main script").count() == 0
    assert dialogs == [], dialogs
    assert not [e for e in errors if "Content Security Policy" in e], errors
