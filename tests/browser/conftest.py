"""The console in a real browser: Debian's headless `chromium`, driven by Playwright.

One `reconciler serve` for the whole kind, on a free loopback port, over a SQLite
state with the examples applied (webhooks.d/: acme and globex) and four tokens made
by `reconciler tokens create`: an acme admin, an acme auditor, a globex auditor and
an acme publisher. acme's Slack webhooks send to a receiver on loopback that the
tests script: `failed_delivery` makes it answer 400 to one event (a 4xx fails at
once), so each test that needs a failed delivery gets one of its own.

One browser for the kind too; each test opens a context of its own (its own
cookies), which costs milliseconds. Nothing sleeps: Playwright waits for what a
test expects, and the state is polled under a deadline.

The browser is the system's (`/usr/bin/chromium`, or RECONCILER_CHROMIUM), never a
build Playwright downloads. Without it every test here fails and says how to
install it: `apt-get install -y chromium`.

Screenshots go to a temporary folder, or to RECONCILER_SCREENSHOTS when it is set
(`RECONCILER_SCREENSHOTS=docs/console` refreshes the ones the docs show).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.helpers_state import EXAMPLES, REPO, run_cli
from tests.support.receiver import DEADLINE, Receiver, ok, status
from tests.support.serve_process import Server, eventually

CHROMIUM = os.environ.get("RECONCILER_CHROMIUM", "/usr/bin/chromium")
INSTALL = "apt-get install -y chromium"
SLACK_PATH = "/acme/slack"
# What a screenshot shows: a laptop's window, and a phone's.
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 375, "height": 667}
# Playwright's waits: long enough for a loaded machine, short enough to fail clearly.
WAIT_MS = 15_000


def _playwright() -> Any:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(
            "Playwright for Python is missing: .venv/bin/pip install -e '.[dev]'", pytrace=False
        )
    return sync_playwright


# Module-scoped, not session-scoped: Playwright's sync API runs an event loop on this
# thread while it is open, and every test after it that calls asyncio.run (most of
# the suite) would find one running. A module of browser tests opens it and closes
# it; the rest of the run never sees it.
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium, the system's build."""
    if not (Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK)):
        pytest.fail(
            f"no Chromium at {CHROMIUM}: install Debian's with `{INSTALL}` (as root), or "
            "set RECONCILER_CHROMIUM to a Chromium executable",
            pytrace=False,
        )
    with _playwright()() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield launched
        finally:
            launched.close()


@dataclass
class Console:
    """The running `serve`, its state, its receiver and its tokens."""

    url: str
    server: Server
    receiver: Receiver
    root: Path
    tokens: dict[str, str]  # "acme-admin", "acme-auditor", "globex-auditor", "acme-publisher"

    def api(self, method: str, path: str, token: str = "acme-admin", **kwargs: Any) -> Any:
        answer = httpx.request(
            method,
            f"{self.url}{path}",
            headers={"Authorization": f"Bearer {self.tokens[token]}"},
            timeout=DEADLINE,
            **kwargs,
        )
        assert answer.status_code < 300, f"{method} {path}: {answer.status_code} {answer.text}"
        return answer.json()

    def fire(self, event_type: str, name: str) -> str:
        """Post an acme event as the publisher; its id."""
        answer = self.api(
            "POST",
            "/v1/events",
            "acme-publisher",
            json={
                "type": event_type,
                "organization": "acme",
                "name": name,
                "description": f"{name} in eu-west-1",
            },
        )
        assert answer["deliveries"] == 1, answer
        event_id: str = answer["event_id"]
        return event_id

    def delivery_of(self, event_id: str, wanted: str) -> dict[str, Any]:
        """The event's one delivery, once its status is `wanted`."""

        def finished() -> dict[str, Any] | None:
            found = self.api("GET", f"/v1/deliveries?org=acme&event_id={event_id}")
            rows = [d for d in found["deliveries"] if d["status"] == wanted]
            return rows[0] if rows else None

        return eventually(finished, f"the delivery of {event_id} {wanted}", self.server)


TOKENS = {
    "acme-admin": ("admin", "acme"),
    "acme-auditor": ("auditor", "acme"),
    "globex-auditor": ("auditor", "globex"),
    "acme-publisher": ("publisher", "acme"),
}


@pytest.fixture(scope="session")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    root = tmp_path_factory.mktemp("console")
    shutil.copytree(EXAMPLES, root / "webhooks.d")
    state = f"sqlite:///{root / 'state.db'}"
    applied = run_cli(
        ["apply", "webhooks.d", "--state", state, "--auto-approve", "--actor", "platform-ci"],
        root,
    )
    assert applied.returncode == 0, applied.stdout + applied.stderr
    tokens = {}
    for key, (role, org) in TOKENS.items():
        made = run_cli(
            ["tokens", "create", "--role", role, "--org", org, "--name", key, "--state", state],
            root,
        )
        assert made.returncode == 0, made.stdout + made.stderr
        tokens[key] = made.stdout.strip()
    with Receiver() as receiver:
        # Every acme Slack webhook sends here; the GET status board and globex's
        # webhook send outside loopback, so no test fires their events.
        server = Server(root, state, 1, env={"ACME_SLACK_URL": receiver.url(SLACK_PATH)})
        try:
            server.wait_ready()
            made_console = Console(server.url, server, receiver, root, tokens)
            # History beside the apply: deliveries delivered, for the pages to show.
            for event_type in ("reserved_instance_surplus", "reserved_instance_deficit"):
                made_console.delivery_of(made_console.fire(event_type, "ri-check"), "delivered")
            yield made_console
        finally:
            server.stop()
        assert not receiver.errors, receiver.errors


@pytest.fixture
def failed_delivery(console: Console) -> str:
    """A delivery of acme's that failed (its receiver answered 400); its id."""
    console.receiver.script(SLACK_PATH, status(400, body=b'{"error": "channel_not_found"}'))
    try:
        event_id = console.fire("reserved_instance_surplus", "rule-nightly-backup")
        delivery: dict[str, Any] = console.delivery_of(event_id, "failed")
    finally:
        console.receiver.script(SLACK_PATH, ok())
    delivery_id: str = delivery["id"]
    return delivery_id


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the tests save a PNG of each page they open."""
    chosen = os.environ.get("RECONCILER_SCREENSHOTS")
    if not chosen:
        return tmp_path_factory.mktemp("screenshots")
    folder = Path(chosen)
    folder = folder if folder.is_absolute() else REPO / folder
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class Session:
    """A browser context signed in (or not yet) as one token's holder."""

    def __init__(self, browser: Any, console: Console, screenshots: Path, **options: Any) -> None:
        self.console = console
        self.context = browser.new_context(
            base_url=console.url, viewport=options.pop("viewport", DESKTOP), **options
        )
        self.context.set_default_timeout(WAIT_MS)
        self.page = self.context.new_page()
        self.screenshots = screenshots

    def sign_in(self, token: str) -> Any:
        page = self.page
        page.goto("/ui/sign-in")
        page.get_by_label("API token").fill(self.console.tokens[token])
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_load_state()
        return page

    def open(self, path: str) -> Any:
        """Go to `path`; the answer (its status is checked by the caller)."""
        return self.page.goto(path)

    def shoot(self, name: str) -> Path:
        path = self.screenshots / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def csrf_token(self) -> str:
        value: str = self.page.locator("input[name=csrf_token]").first.input_value()
        return value

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def session(browser: Any, console: Console, screenshots: Path) -> Iterator[Session]:
    opened = Session(browser, console, screenshots)
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def phone(browser: Any, console: Console, screenshots: Path) -> Iterator[Session]:
    opened = Session(browser, console, screenshots, viewport=PHONE, is_mobile=True, has_touch=True)
    try:
        yield opened
    finally:
        opened.close()
