"""The console's pages in a real browser, for each role: what each may see and do.

Each test signs in through the sign-in form as a person would, and saves a PNG of
the pages it opens (tests/browser/conftest.py says where).
"""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import Console, Session

ACME_WEBHOOK = "/ui/webhooks/acme/slack-ri-surplus"
GLOBEX_WEBHOOK = "/ui/webhooks/globex/finops-signed"


@pytest.mark.parametrize("token", ["acme-admin", "acme-auditor", "globex-auditor"])
def test_each_reading_role_signs_in_and_lands_on_the_webhooks(session: Session, token: str) -> None:
    page = session.sign_in(token)
    expect(page).to_have_url(re.compile(r"/ui/webhooks$"))
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()


def test_a_publisher_token_cannot_read_the_console(session: Session) -> None:
    """A publisher only sends events (the API's rule): signing in with its token does
    not open the console's pages."""
    page = session.sign_in("acme-publisher")
    expect(page.get_by_role("alert")).to_contain_text("publisher")
    answer = session.open("/ui/webhooks")
    assert page.url.endswith("/ui/sign-in") or answer.status in (401, 403), page.url


def test_a_wrong_token_is_refused_with_a_message(session: Session) -> None:
    page = session.page
    page.goto("/ui/sign-in")
    page.get_by_label("API token").fill("rk_not-a-token")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_be_visible()
    expect(page).to_have_url(re.compile(r"/ui/sign-in"))
    session.shoot("sign-in-refused")


def test_signed_out_pages_send_to_the_sign_in_form(session: Session) -> None:
    page = session.page
    page.goto("/ui/")
    expect(page).to_have_url(re.compile(r"/ui/sign-in"))
    expect(page.get_by_label("API token")).to_be_visible()
    session.shoot("sign-in")
    page.goto("/ui/deliveries")
    expect(page).to_have_url(re.compile(r"/ui/sign-in"))


def test_sign_out_ends_the_session(session: Session) -> None:
    page = session.sign_in("acme-auditor")
    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(re.compile(r"/ui/sign-in"))
    page.goto("/ui/webhooks")
    expect(page).to_have_url(re.compile(r"/ui/sign-in"))


def test_an_admin_opens_every_page(
    session: Session, console: Console, failed_delivery: str
) -> None:
    page = session.sign_in("acme-admin")
    expect(page).to_have_url(re.compile(r"/ui/webhooks$"))
    main = page.get_by_role("main")
    for name in ("slack-ri-surplus", "slack-ri-deficit", "status-board-get"):
        expect(main.get_by_role("link", name=name)).to_be_visible()
    session.shoot("webhooks")

    page.goto(ACME_WEBHOOK)
    expect(main).to_contain_text("slack-ri-surplus")
    expect(main).to_contain_text("reserved_instance_surplus")
    session.shoot("webhook")

    page.goto("/ui/deliveries")
    expect(main.get_by_role("link", name=failed_delivery)).to_be_visible()
    session.shoot("deliveries")
    page.goto("/ui/deliveries?status=failed")
    expect(main.get_by_role("link", name=failed_delivery)).to_be_visible()
    rows = main.locator("tbody tr")
    expect(rows.filter(has_text="delivered")).to_have_count(0)
    expect(rows.filter(has_text="failed").first).to_be_visible()

    page.goto(f"/ui/deliveries/{failed_delivery}")
    expect(main).to_contain_text("400")
    expect(main).to_contain_text("channel_not_found")
    session.shoot("delivery")

    page.goto("/ui/history")
    expect(main).to_contain_text("platform-ci")
    expect(main).to_contain_text("slack-ri-surplus")
    session.shoot("history")

    page.goto("/ui/activity")
    expect(main.locator("svg").first).to_be_visible()
    session.shoot("activity")

    page.goto("/ui/new")
    expect(page.get_by_label("Body")).to_be_visible()
    session.shoot("new")


def test_an_auditor_reads_every_page_and_sees_no_replay_button(
    session: Session, failed_delivery: str
) -> None:
    page = session.sign_in("acme-auditor")
    main = page.get_by_role("main")
    for path in ("/ui/webhooks", ACME_WEBHOOK, "/ui/deliveries", "/ui/history", "/ui/activity"):
        answer = session.open(path)
        assert answer.status == 200, path
    answer = session.open(f"/ui/deliveries/{failed_delivery}")
    assert answer.status == 200
    expect(main).to_contain_text("channel_not_found")
    expect(page.get_by_role("button", name="Replay")).to_have_count(0)


def test_a_globex_auditor_sees_nothing_of_acme(session: Session, failed_delivery: str) -> None:
    """Every organization is a tenant: no acme webhook, delivery or history entry on
    any page, and acme's URLs answer as if nothing were there."""
    page = session.sign_in("globex-auditor")
    main = page.get_by_role("main")
    expect(main.get_by_role("link", name="finops-signed")).to_be_visible()
    for path in ("/ui/webhooks", "/ui/deliveries", "/ui/history", "/ui/activity"):
        answer = session.open(path)
        assert answer.status == 200, path
        expect(main).not_to_contain_text("acme")
        expect(main).not_to_contain_text("slack-")
    assert session.open(GLOBEX_WEBHOOK).status == 200
    for path in (ACME_WEBHOOK, f"/ui/deliveries/{failed_delivery}"):
        answer = session.open(path)
        assert answer.status == 404, path
        # The answer names what was asked for, as the API's does, and nothing more.
        expect(main).to_contain_text("Not found")
        expect(main).not_to_contain_text("reserved_instance_surplus")
        expect(main).not_to_contain_text("channel_not_found")
    # A filter naming acme is no way round it.
    for path in ("/ui/webhooks?org=acme", "/ui/deliveries?org=acme", "/ui/activity?org=acme"):
        answer = session.open(path)
        assert answer.status in (200, 403, 404), path
        expect(main).not_to_contain_text("slack-")
