"""The harness of the browser tests: one platform per test session (`leads run --services all`
on a database, subject prefix, signing key and ports of its own), Debian's Chromium driven by
Playwright, and helpers that act as the systems around the platform do (publishing events,
an admin adding people) so that each test can then act as a person in a browser would.

Each test gets an organisation of its own, so tests never see one another's leads.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = Path(__file__).resolve().parent / "screenshots"
SERVICES = ["ingest", "lead", "qualification", "assignment", "followup", "broadcast", "people", "notifications"]
PASSWORD = "correct horse battery staple"
# Long enough for an event to travel NATS, ingest and the lead service on a busy 2-core machine.
EVENTUAL = 20_000

expect.set_options(timeout=EVENTUAL)


def _admin_url() -> str:
    return (
        os.environ.get("LEADS_ADMIN_DATABASE_URL")
        or os.environ.get("LEADS_TEST_DATABASE_URL")
        or "postgres://postgres@127.0.0.1:5432/postgres"
    )


def _with_database(url: str, name: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(path=f"/{name}"))


class Platform:
    """A running `leads run --services all` and the command line beside it."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.binary = Path(os.environ.get("LEADS_BIN", ROOT / "target" / "debug" / "leads"))
        suffix = secrets.token_hex(4)
        self.database = f"browser_{suffix}"
        self.admin_url = _admin_url()
        key = workdir / "local.key"
        key.write_text(secrets.token_urlsafe(48))
        key.chmod(0o600)
        self.env = {
            **os.environ,
            "LEADS_DATABASE_URL": _with_database(self.admin_url, self.database),
            "LEADS_NATS_URL": os.environ.get("LEADS_TEST_NATS_URL")
            or os.environ.get("LEADS_NATS_URL")
            or "nats://127.0.0.1:4222",
            "LEADS_SUBJECT_PREFIX": f"browser{suffix}.",
            "LEADS_AUTH_SIGNING_KEY_FILE": str(key),
            "LEADS_CONSOLE_PORT": "0",
            # Eight services share a Postgres that other test suites use at the same time.
            "LEADS_DATABASE_MAX_CONNECTIONS": "3",
            "LEADS_DATABASE_EXPORT_MAX_CONNECTIONS": "1",
            "LEADS_METRICS_ADDR": "",
            # Webhooks may reach a receiver a test runs on loopback (test_notifications.py).
            "LEADS_NOTIFICATIONS_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.1/32",
            "RUST_LOG": os.environ.get("RUST_LOG", "info"),
            # An error at start-up reads as its message, not a backtrace.
            "RUST_LIB_BACKTRACE": "0",
        }
        for service in SERVICES:
            self.env[f"LEADS_GRPC_{service.upper()}_PORT"] = "0"
        self.addrs: dict[str, str] = {}
        self.console = ""
        self.process: subprocess.Popen | None = None
        self.stderr_lines: list[str] = []

    def start(self, deadline_secs: float = 120) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{self.database}"')
        with open(self.workdir / "leads.log", "wb") as logs:
            self.process = subprocess.Popen(
                [str(self.binary), "run", "--services", "all"],
                env=self.env,
                stdout=logs,
                stderr=subprocess.PIPE,
                text=True,
                cwd=ROOT,
            )
        ready = threading.Event()

        def read_stderr() -> None:
            assert self.process and self.process.stderr
            for line in self.process.stderr:
                line = line.rstrip("\n")
                self.stderr_lines.append(line)
                name, _, addr = line.partition(" ")
                if name in SERVICES and addr:
                    self.addrs[name] = addr
                elif name == "console" and addr.startswith("http://"):
                    self.console = addr
                elif line == "ready":
                    ready.set()

        reader = threading.Thread(target=read_stderr, daemon=True)
        reader.start()
        end = time.monotonic() + deadline_secs
        while not ready.wait(0.1):
            if self.process.poll() is not None or time.monotonic() > end:
                self.stop()
                reader.join(timeout=5)
                raise RuntimeError(
                    "leads run did not become ready:\n" + "\n".join(self.stderr_lines[-40:])
                )
        # The command line reaches the services where this run bound them.
        for service in SERVICES:
            self.env[f"LEADS_{service.upper()}_ENDPOINT"] = f"http://{self.addrs[service]}"
            self.env[f"LEADS_GRPC_{service.upper()}_PORT"] = self.addrs[service].rsplit(":", 1)[1]

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        try:
            with psycopg.connect(self.admin_url, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
        except psycopg.Error as error:
            print(f"could not drop {self.database}: {error}")

    def leads(self, *args: str, stdin: str | None = None) -> str:
        """Runs the `leads` command line against this platform; its stdout."""
        done = subprocess.run(
            [str(self.binary), *args],
            env=self.env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
        if done.returncode != 0:
            raise RuntimeError(f"leads {' '.join(args)} failed: {done.stderr}")
        return done.stdout

    def publish(self, org: str, subject: str, event: dict) -> None:
        self.leads("publish", "--subject", subject, "--org", org, "-", stdin=json.dumps(event))

    def url(self, path_and_query: str) -> str:
        """A link printed by the command line, on the console this run serves."""
        parts = urllib.parse.urlsplit(path_and_query)
        query = f"?{parts.query}" if parts.query else ""
        return f"{self.console}{parts.path}{query}"


@dataclass
class Person:
    org: str
    email: str
    name: str
    role: str
    setup_link: str
    agent_id: str = ""
    has_password: bool = False


@dataclass
class Org:
    """An organisation of its own for one test, and what acts on it from outside the browser."""

    platform: Platform
    browser: Browser
    id: str
    contexts: list[BrowserContext] = field(default_factory=list)
    _events: int = 0

    def add_person(self, role: str, name: str | None = None, agent_id: str = "") -> Person:
        """A person added by the organisation's admin, as `leads people add` does it."""
        slug = re.sub(r"[^a-z0-9]+", "-", (name or role).lower()).strip("-")
        email = f"{slug}-{secrets.token_hex(2)}@{self.id}.test"
        args = ["people", "add", "--org", self.id, "--email", email, "--name", name or role.title()]
        args += ["--role", role, "--console-url", self.platform.console]
        if agent_id:
            args += ["--agent-id", agent_id]
        printed = self.platform.leads(*args)
        link = re.search(r"\S*/set-password\?code=\S+", printed)
        assert link, f"no setup link in: {printed}"
        return Person(self.id, email, name or role.title(), role, self.platform.url(link.group(0)), agent_id)

    def context(self) -> BrowserContext:
        context = self.browser.new_context(
            base_url=self.platform.console,
            viewport={"width": 1366, "height": 900},
            accept_downloads=True,
            timezone_id="UTC",
            locale="en-GB",
        )
        context.set_default_timeout(EVENTUAL)
        self.contexts.append(context)
        return context

    def sign_in(self, person: Person, context: BrowserContext | None = None) -> Page:
        """A page signed in as `person`, who first chooses a password through the setup link."""
        page = (context or self.context()).new_page()
        if not person.has_password:
            page.goto(person.setup_link)
            page.get_by_label("Password (12 characters or more)").fill(PASSWORD)
            page.get_by_label("The same again").fill(PASSWORD)
            page.get_by_role("button", name="Set password").click()
            person.has_password = True
            # The answer is the sign-in form, filled in with the organisation and email.
            expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
        else:
            page.goto("/sign-in")
            form = password_form(page)
            form.get_by_label("Organisation").fill(person.org)
            form.get_by_label("Email").fill(person.email)
        form = password_form(page)
        form.get_by_label("Password", exact=True).fill(PASSWORD)
        form.get_by_role("button", name="Sign in").click()
        page.wait_for_url("**/leads")
        return page

    def event(self, phone: str, name: str, text: str = "Hello, is this still available?", **extra) -> dict:
        """An inbound chat message from a contact, as a chat system publishes it."""
        self._events += 1
        at = datetime.now(timezone.utc) - timedelta(seconds=30) + timedelta(milliseconds=self._events)
        event = {
            "event_id": f"evt-{self._events}-{secrets.token_hex(3)}",
            "occurred_at": at.isoformat().replace("+00:00", "Z"),
            "kind": "chat_message",
            "contact": {"phone": phone, "name": name},
            "text": text,
        }
        event.update(extra)
        return event

    def chat(self, phone: str, name: str, text: str = "Hello, is this still available?", **extra) -> dict:
        event = self.event(phone, name, text, **extra)
        self.platform.publish(self.id, "interactions", event)
        return event


@pytest.fixture(scope="session")
def platform():
    with tempfile.TemporaryDirectory(prefix="leads-browser-") as workdir:
        running = Platform(Path(workdir))
        running.start()
        try:
            yield running
        finally:
            running.stop()
            log = Path(workdir) / "leads.log"
            errors = [
                line for line in log.read_text(errors="replace").splitlines() if '"level":"ERROR"' in line
            ]
            if errors:
                print("errors logged by leads run:\n" + "\n".join(errors[-20:]))


@pytest.fixture(scope="session")
def browser():
    executable = os.environ.get("LEADS_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=args, headless=True)
        yield launched
        launched.close()


@pytest.fixture
def org(platform: Platform, browser: Browser):
    current = Org(platform, browser, f"acme-{secrets.token_hex(3)}")
    yield current
    for context in current.contexts:
        context.close()


def password_form(page: Page):
    """The sign-in page's form for a password (the page may offer other ways too)."""
    return page.locator('form[action="/sign-in"]')


def phone(n: int) -> str:
    """A phone number of the test range, distinct per `n`."""
    return f"+1415555{n:04d}"


def screenshot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(exist_ok=True)
    # caret="initial": hiding the caret sets style attributes, which the page's CSP (rightly)
    # refuses when htmx later settles a swapped element.
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), caret="initial")


def row(page: Page, name: str):
    """The list's row of the contact called `name`."""
    return page.locator("#rows tr").filter(has=page.locator("a.contact", has_text=name))


def lead_id_of(page: Page, name: str) -> str:
    locator = row(page, name)
    expect(locator).to_have_count(1)
    return locator.get_attribute("data-lead") or ""


def wait_for_lead(page: Page, name: str, query: str = "") -> None:
    """Reloads the list until the contact's lead is on it (the event is on its way)."""
    end = time.monotonic() + EVENTUAL / 1000
    while True:
        page.goto(f"/leads{query}")
        if row(page, name).count() == 1:
            return
        if time.monotonic() > end:
            raise AssertionError(f"no lead of {name} on the page")
        page.wait_for_timeout(200)


def live(page: Page) -> None:
    """Waits until the page follows the live changes."""
    expect(page.locator("body")).to_have_attribute("data-live", "open")


def open_drawer(page: Page, name: str) -> None:
    row(page, name).locator("a.contact").click()
    expect(page.locator("#drawer h2#drawer-title")).to_have_text(name)
