"""Worker: one bad answer or definition fails one delivery, never the batch; no private
address is reached."""

from __future__ import annotations

import pytest
from pytest_httpx import HTTPXMock

from reconciler.store.sqlite import SqliteStore
from tests.support.helpers_state import (
    FakeClock,
    spec,
)
from tests.unit.worker.helpers import (
    START,
    live,
    once,
    queue,
    shown,
)

# -- bugs: one bad answer or definition must not take the batch down ------------------


def test_a_retry_after_that_is_not_a_number_is_ignored(
    store: SqliteStore, clock: FakeClock, httpx_mock: HTTPXMock
) -> None:
    # BUG: `Retry-After: ²` passes str.isdigit() and float() raises ValueError,
    # which escapes run_once: the batch's outcomes are never recorded and the
    # dispatcher's worker task dies.
    live(store, spec("a"))
    delivery = queue(store, clock)
    httpx_mock.add_response(status_code=429, headers=[(b"Retry-After", "²".encode())])
    once(store, clock)
    record, _ = shown(store, delivery)
    assert record.status == "pending"
    assert record.due_at is not None
    assert START + 4 <= record.due_at <= START + 6


@pytest.mark.httpx_mock(assert_all_responses_were_requested=False)
def test_a_header_value_httpx_cannot_send_fails_one_delivery_not_the_batch(
    store: SqliteStore, clock: FakeClock, httpx_mock: HTTPXMock
) -> None:
    # BUG: a non-ASCII header value (valid in a definition, and `validate` says
    # so) raises UnicodeEncodeError out of sender.send; run_once raises, no
    # outcome of the batch is recorded, and the worker loop dies.
    live(
        store,
        spec("good"),
        spec("zurich", headers={"Content-Type": "application/json", "X-Team": "Zürich"}),
    )
    queue(store, clock)
    httpx_mock.add_response(url="https://hooks.example.com/good")
    httpx_mock.add_response(url="https://hooks.example.com/zurich")
    once(store, clock)
    statuses = {r.webhook: r.status for r in store.deliveries()}
    assert statuses["good"] == "delivered"
    assert statuses["zurich"] in ("delivered", "failed")


@pytest.mark.httpx_mock(assert_all_requests_were_expected=False)
@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",  # link-local: cloud metadata
        "http://127.0.0.1:8080/hook",  # loopback
        "http://10.0.0.5/hook",  # private
        "http://[::1]/hook",
    ],
)
def test_no_request_reaches_private_loopback_or_link_local_addresses(
    store: SqliteStore, clock: FakeClock, httpx_mock: HTTPXMock, url: str
) -> None:
    # BUG: DESIGN.md (Dispatcher): "No request reaches private, loopback or
    # link-local addresses unless the deployment allows it". The dispatcher has
    # no such check (only `validate` warns), so these are sent.
    live(store, spec("a", url=url))
    delivery = queue(store, clock)
    once(store, clock)
    assert httpx_mock.get_requests() == []
    assert shown(store, delivery)[0].status == "failed"
