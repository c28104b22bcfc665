"""The console on a real `reconciler serve` over loopback (its own HTTP protocol, the
intake's fast path in front): mounted by default, absent with --no-console."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx

from reconciler import tokens
from reconciler.store.sqlite import SqliteStore
from tests.support.helpers_state import make_state, put_specs, spec, sqlite_url
from tests.support.serve_process import Server


def _state(tmp_path: Path) -> tuple[str, str]:
    url = make_state(sqlite_url(tmp_path / "state.db"))
    store = SqliteStore(tmp_path / "state.db")
    try:
        put_specs(store, [spec("slack", headers={"Authorization": "Bearer sekret-0123456789ab"})])
        _, secret = tokens.create_token(
            store,
            role="auditor",
            organizations=["acme"],
            all_organizations=False,
            name="browser",
            expires_in=None,
            now=time.time(),
        )
    finally:
        store.close()
    return url, secret


def test_a_person_signs_in_and_reads_on_serve(tmp_path: Path) -> None:
    url, secret = _state(tmp_path)
    server = Server(tmp_path, url, 1)
    try:
        server.wait_ready()
        with httpx.Client(base_url=server.url, follow_redirects=False) as client:
            form = client.get("/ui/sign-in")
            csrf = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
            assert csrf, form.text
            signed = client.post("/ui/sign-in", data={"token": secret, "csrf_token": csrf.group(1)})
            assert signed.status_code == 303, signed.text
            page = client.get("/ui/webhooks/acme/slack")
            assert page.status_code == 200
            assert "Authorization: ****" in page.text and "sekret" not in page.text
            assert page.headers["x-frame-options"] == "DENY"
            # the API beside it is unchanged
            assert client.get("/v1/deliveries").status_code == 401
    finally:
        server.stop()


def test_no_console_leaves_ui_unmounted(tmp_path: Path) -> None:
    url, _ = _state(tmp_path)
    server = Server(tmp_path, url, 1, ["--no-console"])
    try:
        server.wait_ready()
        assert httpx.get(server.url + "/ui/sign-in").status_code == 404
        assert httpx.get(server.url + "/healthz").status_code == 200
    finally:
        server.stop()
