"""The console's sign-in, sessions, CSRF, headers, roles and organizations, over
HTTP against the real app (the API with /ui/ mounted) on SQLite."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler import tokens
from reconciler.dispatch.console.sessions import ABSOLUTE_SECONDS, COOKIE, IDLE_SECONDS
from tests.support.console import Console, add_event, console_over, csrf_of
from tests.support.helpers_state import put_specs, spec

SECRET_HEADER = "Bearer s3cr3t-literal-value-0123456789"


@pytest.fixture
def console(tmp_path: Path) -> Iterator[Console]:
    with console_over(tmp_path / "state.db") as made:
        put_specs(
            made.store,
            [
                spec("slack", headers={"Authorization": SECRET_HEADER}),
                spec("pager"),
                spec("ops", "globex"),
            ],
        )
        add_event(made, "acme", "e1")
        add_event(made, "globex", "e2")
        yield made


PAGES = [
    "/ui/webhooks",
    "/ui/webhooks/acme/slack",
    "/ui/deliveries",
    "/ui/history",
    "/ui/activity",
    "/ui/new",
]


def test_the_root_sends_a_stranger_to_sign_in_and_a_member_to_the_webhooks(
    console: Console,
) -> None:
    stranger = console.client()
    assert stranger.get("/ui/").headers["location"] == "/ui/sign-in"
    for page in PAGES:
        assert stranger.get(page).headers["location"] == "/ui/sign-in"
    member = console.signed_in("acme")
    assert member.get("/ui/").headers["location"] == "/ui/webhooks"


def test_sign_in_keeps_a_random_session_id_in_a_strict_cookie_never_the_token(
    console: Console,
) -> None:
    secret = console.token("acme", role="auditor")
    client = console.client()
    form = client.get("/ui/sign-in")
    assert '<label for="token">API token</label>' in form.text
    answer = client.post("/ui/sign-in", data={"token": secret, "csrf_token": csrf_of(form.text)})
    assert answer.status_code == 303
    cookie = next(h for h in answer.headers.get_list("set-cookie") if h.startswith(COOKIE + "="))
    flags = [part.strip().lower() for part in cookie.split(";")]
    assert "httponly" in flags and "samesite=strict" in flags and "path=/ui/" in flags
    assert "secure" not in flags  # plain http here; https requests get Secure
    value = cookie.split(";")[0].split("=", 1)[1]
    assert secret not in cookie and tokens.token_hash(secret) not in cookie
    assert len(value) >= 40
    for page in PAGES:
        shown = client.get(page)
        assert shown.status_code == 200, page
        assert secret not in shown.text


def test_over_https_the_cookie_is_secure(console: Console) -> None:
    client = console.client("https://console.example")
    form = client.get("/ui/sign-in")
    answer = client.post(
        "/ui/sign-in", data={"token": console.token("acme"), "csrf_token": csrf_of(form.text)}
    )
    cookie = next(h for h in answer.headers.get_list("set-cookie") if h.startswith(COOKIE))
    assert "secure" in [part.strip().lower() for part in cookie.split(";")]


def test_a_bad_token_is_refused_on_the_form(console: Console) -> None:
    client = console.client()
    form = client.get("/ui/sign-in")
    answer = client.post(
        "/ui/sign-in", data={"token": "rcn_not-a-token", "csrf_token": csrf_of(form.text)}
    )
    assert answer.status_code == 401
    assert 'role="alert"' in answer.text and "not valid" in answer.text
    assert f"{COOKIE}=" not in answer.headers.get("set-cookie", "")


def test_sign_out_deletes_the_session(console: Console) -> None:
    client = console.signed_in("acme")
    page = client.get("/ui/webhooks")
    cookie = client.cookies.get(COOKIE)
    out = client.post("/ui/sign-out", data={"csrf_token": csrf_of(page.text)})
    assert out.status_code == 303 and out.headers["location"] == "/ui/sign-in"
    again = console.client()
    again.cookies.set(COOKIE, cookie or "", path="/ui/")
    assert again.get("/ui/webhooks").headers["location"] == "/ui/sign-in"
    assert console.store.delete_expired_sessions(console.clock() + 10 * ABSOLUTE_SECONDS) == 0


def test_a_session_ends_when_idle_and_at_its_absolute_limit(console: Console) -> None:
    client = console.signed_in("acme")
    console.clock.now += IDLE_SECONDS - 1
    assert client.get("/ui/webhooks").status_code == 200  # in use: moved on
    console.clock.now += IDLE_SECONDS - 1
    assert client.get("/ui/webhooks").status_code == 200
    console.clock.now += IDLE_SECONDS + 1
    assert client.get("/ui/webhooks").headers["location"] == "/ui/sign-in"

    busy = console.signed_in("acme")
    for _ in range(int(ABSOLUTE_SECONDS // (IDLE_SECONDS / 2)) + 1):
        console.clock.now += IDLE_SECONDS / 2
        last = busy.get("/ui/webhooks")
    assert last.headers["location"] == "/ui/sign-in"
    # the first was swept by the second sign-in; the second goes now
    assert console.store.delete_expired_sessions(console.clock()) == 1


def test_a_revoked_or_expired_token_ends_its_sessions(console: Console) -> None:
    secret = console.token("acme")
    client = console.sign_in(secret)
    record = tokens.find_by_hash(console.store, tokens.token_hash(secret))
    assert record is not None
    tokens.revoke_token(console.store, record.id, console.clock())
    console.clock.now += 2  # past the API's token cache
    assert client.get("/ui/webhooks").headers["location"] == "/ui/sign-in"

    _, secret2 = tokens.create_token(
        console.store,
        role="admin",
        organizations=["acme"],
        all_organizations=False,
        name="short",
        expires_in=120,
        now=console.clock(),
    )
    short = console.sign_in(secret2)
    assert short.get("/ui/webhooks").status_code == 200
    console.clock.now += 121
    assert short.get("/ui/webhooks").headers["location"] == "/ui/sign-in"


POSTS = [
    "/ui/sign-out",
    "/ui/new",
    "/ui/new/check",
    "/ui/deliveries/{delivery}/replay",
    "/ui/deliveries/{delivery}/retry",
]


def test_every_post_without_the_csrf_token_is_refused(console: Console) -> None:
    client = console.signed_in("acme")
    (delivery,) = console.store.deliveries(organizations=["acme"], webhook="slack")
    for route in POSTS:
        path = route.format(delivery=delivery.id)
        for data in ({}, {"csrf_token": "wrong"}):
            answer = client.post(path, data=data)
            assert answer.status_code == 403, path
            assert "CSRF" in answer.text
    assert client.get("/ui/webhooks").status_code == 200  # still signed in
    stranger = console.client()
    assert stranger.post("/ui/sign-in", data={"token": "rcn_x"}).status_code == 403


def test_every_answer_has_the_security_headers(console: Console) -> None:
    client = console.signed_in("acme")
    for page in [*PAGES, "/ui/sign-in", "/ui/static/console.js", "/ui/nope"]:
        headers = client.get(page).headers
        csp = headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp, page
        assert "frame-ancestors 'none'" in csp
        assert headers["x-frame-options"] == "DENY"
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["referrer-policy"] == "same-origin"
    assert "<script>" not in client.get("/ui/new").text  # no inline script


@pytest.mark.parametrize(
    ("role", "status"), [("admin", 200), ("auditor", 200), ("publisher", 403), ("metrics", 403)]
)
def test_each_role_reads_the_pages_the_api_lets_it_read(
    console: Console, role: str, status: int
) -> None:
    client = console.signed_in("acme", role=role)
    for page in PAGES:
        answer = client.get(page)
        assert answer.status_code == status, (role, page)
    if status == 403:
        assert f"the role {role} may not read deliveries" in answer.text


def test_another_organization_is_not_there(console: Console) -> None:
    client = console.signed_in("globex", role="auditor")
    listing = client.get("/ui/webhooks").text
    assert "ops" in listing and "slack" not in listing and "pager" not in listing
    assert client.get("/ui/webhooks/acme/slack").status_code == 404
    assert client.get("/ui/webhooks?org=acme").status_code == 404
    assert client.get("/ui/deliveries?org=acme").status_code == 404
    deliveries = client.get("/ui/deliveries").text
    (acme,) = console.store.deliveries(organizations=["acme"], webhook="slack")
    assert acme.id not in deliveries
    assert client.get(f"/ui/deliveries/{acme.id}").status_code == 404
    assert "acme" not in client.get("/ui/history").text
    assert "acme" not in client.get("/ui/activity").text


def test_a_secret_never_appears_on_a_page(console: Console) -> None:
    client = console.signed_in("acme")
    for page in [*PAGES, "/ui/webhooks?org=acme", "/ui/history?webhook=slack"]:
        text = client.get(page).text
        assert "s3cr3t-literal-value" not in text, page
    detail = client.get("/ui/webhooks/acme/slack").text
    assert "Authorization: ****" in detail


def test_without_the_console_ui_is_not_mounted(tmp_path: Path) -> None:
    with console_over(tmp_path / "state.db", console=False) as bare:
        assert bare.client().get("/ui/sign-in").status_code == 404


def test_a_session_made_by_one_serve_is_good_on_another_sharing_the_state(
    console: Console, tmp_path: Path
) -> None:
    client = console.signed_in("acme")
    cookie = client.cookies.get(COOKIE)
    # the other reads on a connection of its own, as under serve
    with console_over(tmp_path / "state.db", own_connection=True) as other:
        other.clock.now = console.clock.now
        elsewhere = other.client()
        elsewhere.cookies.set(COOKIE, cookie or "", path="/ui/")
        for page in PAGES:
            assert elsewhere.get(page).status_code == 200, page
        out = elsewhere.post(
            "/ui/sign-out", data={"csrf_token": csrf_of(elsewhere.get("/ui/new").text)}
        )
        assert out.status_code == 303
    assert client.get("/ui/webhooks").headers["location"] == "/ui/sign-in"  # ended there


def test_errors_and_excerpts_are_masked_on_the_delivery_page(console: Console) -> None:
    import sqlite3

    (delivery,) = console.store.deliveries(organizations=["acme"], webhook="slack")
    leaked = "https://hooks.example.com/x?token=s3cr3t-literal-value-0123456789"
    with sqlite3.connect(console.store.url.removeprefix("sqlite:///")) as db:
        db.execute(
            "UPDATE deliveries SET status = 'failed', last_error = ? WHERE id = ?",
            (f"connect failed for {leaked}", delivery.id),
        )
        db.execute(
            "INSERT INTO attempts (delivery_id, number, started_at, duration_ms, status, "
            "response_excerpt, error, outcome) VALUES (?, 1, ?, 5, 401, ?, ?, 'failed')",
            (delivery.id, console.clock(), f"bad {SECRET_HEADER}", f"refused {leaked}"),
        )
    client = console.signed_in("acme", role="auditor")
    for page in (f"/ui/deliveries/{delivery.id}", "/ui/deliveries", "/ui/webhooks/acme/slack"):
        text = client.get(page).text
        assert "s3cr3t-literal-value" not in text, page


def test_one_organizations_activity_is_not_counted_for_another(console: Console) -> None:
    import sqlite3

    (delivery,) = console.store.deliveries(organizations=["acme"], webhook="slack")
    with sqlite3.connect(console.store.url.removeprefix("sqlite:///")) as db:
        db.execute(
            "INSERT INTO attempts (delivery_id, number, started_at, duration_ms, status, "
            "outcome) VALUES (?, 1, ?, 5, 200, 'delivered')",
            (delivery.id, console.clock() - 3600),
        )
    partner = console.signed_in("acme", "globex")
    assert "delivered 1" in partner.get("/ui/activity").text
    assert "delivered 0" in partner.get("/ui/activity?org=globex").text
    assert "delivered 0" in console.signed_in("globex").get("/ui/activity").text
