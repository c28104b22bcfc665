"""Sender.send: one request, and what its answer (or its failure) means.

pytest-httpx stands in for the network: it mocks httpx's default transport,
so a `Sender` over `httpx.AsyncHTTPTransport()` sends nothing for real.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import httpx
import pytest
from pytest_httpx import HTTPXMock, IteratorStream

from reconciler.dispatch.sender import DEFAULT_HEADERS, Outcome, Sender
from reconciler.render import RenderedRequest
from reconciler.store.queue import EXCERPT_LIMIT

URL = "https://hooks.example.com/in"
SLACK = "https://hooks.slack.com/services/T0/B0/SECRET"


def post(url: str = URL, **fields: Any) -> RenderedRequest:
    values: dict[str, Any] = {
        "headers": {"Content-Type": "application/json", "X-Team": "ops"},
        "body": b'{"text": "hi"}',
    }
    values.update(fields)
    return RenderedRequest("POST", url, **values)


def deliver(request: RenderedRequest, timeout: float = 5.0) -> Outcome:
    async def go() -> Outcome:
        async with Sender(httpx.AsyncHTTPTransport()) as sender:
            return await sender.send(request, timeout)

    return asyncio.run(go())


# -- answers ----------------------------------------------------------------------


@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
def test_2xx_is_delivered(httpx_mock: HTTPXMock, status: int) -> None:
    httpx_mock.add_response(
        status_code=status,
        content=b"" if status == 204 else b"ok",
        headers={"Content-Type": "text/plain", "X-Request-Id": "r1", "Set-Cookie": "s=1"},
    )
    outcome = deliver(post())
    assert outcome.kind == "delivered"
    assert outcome.status == status
    assert outcome.error is None
    assert outcome.excerpt == ("" if status == 204 else "ok")
    assert outcome.duration_ms >= 0
    # only headers worth keeping are recorded: no cookies, nothing arbitrary
    assert outcome.response_headers.get("content-type") == "text/plain"
    assert "set-cookie" not in {k.lower() for k in outcome.response_headers}
    assert "x-request-id" not in {k.lower() for k in outcome.response_headers}


def test_the_request_goes_out_as_rendered(httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response()
    deliver(post(headers={"Content-Type": "application/json", "webhook-id": "msg_1"}))
    (request,) = httpx_mock.get_requests()
    assert request.method == "POST"
    assert str(request.url) == URL
    assert request.headers["content-type"] == "application/json"
    assert request.headers["webhook-id"] == "msg_1"
    assert request.content == b'{"text": "hi"}'


def test_the_timeout_is_passed_to_httpx(httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response()
    deliver(post(), timeout=2.5)
    (request,) = httpx_mock.get_requests()
    timeouts = request.extensions["timeout"]
    assert timeouts["read"] == 2.5
    assert timeouts["connect"] == 2.5


def test_a_get_sends_no_body(httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response()
    deliver(RenderedRequest("GET", URL + "?q=a%20b", {}, None))
    (request,) = httpx_mock.get_requests()
    assert request.method == "GET"
    assert request.content == b""
    assert request.url.query == b"q=a%20b"


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408, 429, 425, 599])
def test_server_errors_timeouts_and_throttling_are_retried(
    httpx_mock: HTTPXMock, status: int
) -> None:
    httpx_mock.add_response(status_code=status, text="busy")
    outcome = deliver(post())
    assert outcome.kind == "retry"
    assert outcome.status == status
    assert outcome.error == f"HTTP {status}"
    assert outcome.excerpt == "busy"


@pytest.mark.parametrize(
    ("status", "value"),
    [(429, "30"), (503, "Wed, 21 Oct 2015 07:28:00 GMT")],
)
def test_429_and_503_carry_retry_after(httpx_mock: HTTPXMock, status: int, value: str) -> None:
    httpx_mock.add_response(status_code=status, headers={"Retry-After": value})
    outcome = deliver(post())
    assert (outcome.kind, outcome.retry_after) == ("retry", value)
    assert outcome.response_headers["retry-after"] == value


@pytest.mark.parametrize("status", [500, 502])
def test_other_statuses_ignore_retry_after(httpx_mock: HTTPXMock, status: int) -> None:
    httpx_mock.add_response(status_code=status, headers={"Retry-After": "30"})
    outcome = deliver(post())
    assert (outcome.kind, outcome.retry_after) == ("retry", None)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 405, 409, 413, 422])
def test_other_4xx_fail_at_once(httpx_mock: HTTPXMock, status: int) -> None:
    httpx_mock.add_response(status_code=status, json={"error": "nope"})
    outcome = deliver(post())
    assert outcome.kind == "failed"
    assert outcome.status == status
    assert outcome.error == f"HTTP {status}"
    assert outcome.excerpt == '{"error":"nope"}'


def test_410_means_gone(httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response(status_code=410)
    outcome = deliver(post())
    assert (outcome.kind, outcome.status) == ("gone", 410)
    assert outcome.error is not None
    assert "410" in outcome.error


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_redirects_fail_and_are_not_followed(httpx_mock: HTTPXMock, status: int) -> None:
    httpx_mock.add_response(
        status_code=status, headers={"Location": "http://169.254.169.254/latest/meta-data/"}
    )
    outcome = deliver(post())
    assert outcome.kind == "failed"
    assert outcome.status == status
    assert outcome.error is not None
    assert "redirect" in outcome.error
    assert outcome.response_headers["location"] == "http://169.254.169.254/latest/meta-data/"
    assert len(httpx_mock.get_requests()) == 1  # the Location was never asked for


def test_every_request_carries_the_dispatchers_headers_and_its_own(httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response()
    deliver(post())
    sent = httpx_mock.get_requests()[0].headers
    for name, value in DEFAULT_HEADERS.items():
        assert sent[name] == value
    assert sent["X-Team"] == "ops"
    assert sent["Content-Type"] == "application/json"


def test_a_definitions_header_wins_over_the_dispatchers_default(httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response()
    deliver(post(headers={"user-agent": "acme-hooks/2"}))
    assert httpx_mock.get_requests()[0].headers.get_list("User-Agent") == ["acme-hooks/2"]


# -- failures without an answer -----------------------------------------------------


@pytest.mark.parametrize(
    ("error", "prefix"),
    [
        (httpx.ConnectError("connection refused"), "connection failed"),
        (httpx.ConnectTimeout("connect timed out"), "timed out after 5s"),
        (httpx.ReadTimeout("read timed out"), "timed out after 5s"),
        (httpx.WriteTimeout("write timed out"), "timed out after 5s"),
        (httpx.PoolTimeout("pool timed out"), "timed out after 5s"),
        (httpx.ReadError("connection reset by peer"), "transport error"),
        (httpx.RemoteProtocolError("server disconnected"), "transport error"),
    ],
)
def test_transport_errors_are_retried(httpx_mock: HTTPXMock, error: Exception, prefix: str) -> None:
    httpx_mock.add_exception(error)
    outcome = deliver(post())
    assert outcome.kind == "retry"
    assert outcome.status is None
    assert outcome.error is not None
    assert outcome.error.startswith(prefix)


def test_a_transport_error_without_a_message_names_its_kind(httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_exception(httpx.ReadError(""))
    outcome = deliver(post())
    assert outcome.error == "transport error: ReadError"


# -- secrets in error messages ------------------------------------------------------


@pytest.mark.parametrize(
    "error_type",
    [httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError, httpx.ProxyError],
)
@pytest.mark.parametrize(
    "template",
    [
        "cannot connect to {url}",
        "error while sending POST {url}: reset",
        "POST {path} HTTP/1.1 failed",
        "{host}{path}: connection reset",
    ],
)
def test_an_error_quoting_a_secret_url_never_reveals_its_secret_path(
    httpx_mock: HTTPXMock, error_type: type[httpx.HTTPError], template: str
) -> None:
    message = template.format(url=SLACK, path="/services/T0/B0/SECRET", host="hooks.slack.com")
    httpx_mock.add_exception(error_type(message))
    outcome = deliver(post(SLACK))
    assert outcome.kind == "retry"
    assert outcome.error is not None
    assert "SECRET" not in outcome.error
    assert "B0" not in outcome.error


def test_an_error_quoting_a_url_with_a_secret_query_masks_it(httpx_mock: HTTPXMock) -> None:
    url = "https://hooks.example.com/in?token=SECRET&team=ops"
    httpx_mock.add_exception(httpx.ConnectError(f"cannot connect to {url}"))
    outcome = deliver(post(url))
    assert outcome.error is not None
    assert "SECRET" not in outcome.error
    assert "hooks.example.com" in outcome.error


def test_an_error_quoting_a_plain_url_keeps_its_host(httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_exception(httpx.ConnectError(f"cannot connect to {URL}"))
    outcome = deliver(post())
    assert outcome.error is not None
    assert outcome.error.startswith(
        "connection failed: cannot connect to https://hooks.example.com/"
    )


# -- the response excerpt -------------------------------------------------------------


def test_the_excerpt_is_capped_at_4096_bytes(httpx_mock: HTTPXMock) -> None:
    assert EXCERPT_LIMIT == 4096
    httpx_mock.add_response(status_code=500, content=b"a" * 4000 + b"b" * 10_000)
    outcome = deliver(post())
    assert outcome.excerpt == "a" * 4000 + "b" * 96


def test_an_endless_response_costs_one_excerpt(httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response(stream=IteratorStream(itertools.repeat(b"z" * 1000)))
    outcome = deliver(post())
    assert outcome.kind == "delivered"
    assert outcome.excerpt == "z" * 4096


def test_a_body_that_is_not_utf8_is_decoded_with_replacement(httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response(status_code=400, content=b"caf\xe9 \xff\xfe ok")
    outcome = deliver(post())
    assert outcome.excerpt == "caf\ufffd \ufffd\ufffd ok"


def test_a_multibyte_character_cut_at_the_limit_is_replaced(httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response(content=b"x" * 4095 + "é".encode() * 10)
    outcome = deliver(post())
    assert outcome.excerpt == "x" * 4095 + "\ufffd"


# -- requests httpx refuses to build --------------------------------------------------
# "httpx errors never leave this module": a request httpx cannot even build must
# still become an Outcome. Both of these escape `send` today and take the
# worker's whole batch down with them (see tests/unit/worker/test_bad_answers.py).


@pytest.mark.httpx_mock(assert_all_responses_were_requested=False)
def test_a_header_value_httpx_cannot_encode_is_an_outcome(httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response()
    outcome = deliver(post(headers={"X-Team": "Zürich"}))
    assert outcome.kind in ("delivered", "failed")


@pytest.mark.httpx_mock(assert_all_responses_were_requested=False)
def test_a_url_httpx_refuses_is_an_outcome(httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response()
    outcome = deliver(post("https://hooks.example.com/in\x01"))
    assert outcome.kind == "failed"
    assert httpx_mock.get_requests() == []
