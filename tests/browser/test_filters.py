"""Filtering by status and searching by name or phone digits; the URL holds the view."""

from playwright.sync_api import Page, expect

from conftest import phone, row, screenshot, wait_for_lead


def names(page: Page) -> list[str]:
    return sorted(page.locator("#rows a.contact").all_inner_texts())


def test_filters_and_search_live_in_the_url(org):
    page = org.sign_in(org.add_person("operator", "Olga Operator"))
    org.chat(phone(101), "Ada Lovelace")
    org.chat(phone(202), "Grace Hopper")
    org.chat(phone(303), "Alan Turing")
    # The business answers Grace: an outbound message moves her lead to Contacted.
    grace_reply = org.event(phone(202), "Grace Hopper", "Yes, we do.", direction="outbound")
    org.platform.publish(org.id, "interactions", grace_reply)
    for name in ("Ada Lovelace", "Alan Turing"):
        wait_for_lead(page, name)
    wait_for_lead(page, "Grace Hopper", "?status=contacted")
    page.goto("/leads")
    expect(page.locator("#rows tr")).to_have_count(3)

    # By status.
    page.locator("form.filters").get_by_label("Contacted").check()
    page.locator("form.filters").get_by_role("button", name="Apply").click()
    page.wait_for_url("**/leads?*status=contacted*")
    assert names(page) == ["Grace Hopper"]
    page.reload()
    assert names(page) == ["Grace Hopper"]
    expect(page.locator("form.filters").get_by_label("Contacted")).to_be_checked()

    # By name, among every status again.
    page.locator("form.filters").get_by_label("Contacted").uncheck()
    page.get_by_label("Search").fill("ada")
    page.locator("form.filters").get_by_role("button", name="Apply").click()
    page.wait_for_url("**/leads?*q=ada*")
    assert names(page) == ["Ada Lovelace"]
    screenshot(page, "filters")

    # By some digits of a phone number, as a person types them.
    page.get_by_label("Search").fill("555 0303")
    page.locator("form.filters").get_by_role("button", name="Apply").click()
    page.wait_for_url("**/leads?*q=555*")
    assert names(page) == ["Alan Turing"]
    page.reload()
    assert names(page) == ["Alan Turing"]
    expect(page.get_by_label("Search")).to_have_value("555 0303")

    # The back button walks the views back, each as it was.
    page.go_back()
    page.wait_for_url("**/leads?*q=ada*")
    assert names(page) == ["Ada Lovelace"]
    expect(page.get_by_label("Search")).to_have_value("ada")
    page.go_back()
    page.wait_for_url("**/leads?*status=contacted*")
    assert names(page) == ["Grace Hopper"]
    expect(page.locator("form.filters").get_by_label("Contacted")).to_be_checked()
    page.go_forward()
    page.wait_for_url("**/leads?*q=ada*")
    assert names(page) == ["Ada Lovelace"]
    expect(row(page, "Ada Lovelace")).to_contain_text(phone(101))
