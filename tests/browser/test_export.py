"""Exports: the current page and every matching lead, as CSV files that match the list."""

import csv
import io

from playwright.sync_api import Page, expect

from conftest import phone, row, screenshot, wait_for_lead

LEADS = 27
PAGE = 25


def shown(page: Page) -> list[tuple[str, str, str]]:
    """(id, name, status) of each row the page shows, in order."""
    cells = page.locator("#rows tr").evaluate_all(
        """rows => rows.map(r => [
            r.dataset.lead,
            r.querySelector('a.contact').textContent.trim(),
            [...r.querySelector('.badge').classList].find(c => c.startsWith('status-')).slice(7),
        ])"""
    )
    return [tuple(c) for c in cells]


def download(page: Page, link: str) -> tuple[str, list[tuple[str, str, str]]]:
    with page.expect_download() as started:
        page.get_by_role("link", name=link).click()
    file = started.value
    text = open(file.path(), encoding="utf-8").read()
    records = list(csv.DictReader(io.StringIO(text)))
    rows = [(r["lead_id"], r["contact_name"], r["status"].lower()) for r in records]
    return file.suggested_filename, rows


def test_the_current_page_and_all_matching_leads_download_as_shown(org):
    page = org.sign_in(org.add_person("operator", "Olga Operator"))
    for n in range(LEADS):
        org.chat(phone(500 + n), f"Contact {n:02d}", f"Message number {n}")
    wait_for_lead(page, "Contact 00")
    wait_for_lead(page, f"Contact {LEADS - 1:02d}")
    # Two of them qualified, so that the statuses differ from row to row.
    for name in ("Contact 03", "Contact 17"):
        row(page, name).get_by_role("checkbox").check()
    page.locator("#bulk").get_by_label("Status").select_option(label="Qualified")
    page.locator("#bulk").get_by_role("button", name="Apply to selected").click()
    expect(page.locator("#bulk-results")).to_contain_text("2 changed")

    page.goto(f"/leads?size={PAGE}")
    expect(page.locator("#rows tr")).to_have_count(PAGE)
    first_page = shown(page)

    name, exported = download(page, "Export current page")
    assert name.endswith(".csv") and "-page-" in name, name
    assert exported == first_page
    expect(page.locator("#export-progress")).to_have_text(f"Exported {PAGE} rows.")
    screenshot(page, "export")

    name, everything = download(page, "Export all matching")
    assert "-all-" in name, name
    assert len(everything) == LEADS
    page.get_by_role("link", name="Next page").click()
    expect(page.locator("#rows tr")).to_have_count(LEADS - PAGE)
    assert sorted(everything) == sorted(first_page + shown(page))
    assert sorted(status for _, _, status in everything).count("qualified") == 2
    assert {n for _, n, _ in everything} == {f"Contact {n:02d}" for n in range(LEADS)}
