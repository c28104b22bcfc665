"""render(): a definition and an event in, the exact request out."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import httpx
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from reconciler import templates
from reconciler.loader import load_definitions
from reconciler.model import WebhookSpec
from reconciler.render import EventData, Renderer, RenderError, format_time, render

VALID = Path(__file__).resolve().parents[1] / "examples" / "valid"
MOMENT = datetime(2026, 11, 29, 21, 22, 42, tzinfo=UTC)
MOMENT_TEXT = "2026-11-29T21:22:42Z"


def spec(**fields: Any) -> WebhookSpec:
    base: dict[str, Any] = {
        "name": "hook",
        "organization": "acme",
        "event": "new_rule_violation",
        "method": "POST",
        "url": "https://hooks.acme.example/in",
    }
    return WebhookSpec.model_validate({**base, **fields})


def event(**fields: Any) -> EventData:
    base: dict[str, Any] = {
        "event": "new_rule_violation",
        "organization": "acme",
        "name": "untagged-volumes",
        "description": "3 volumes have no owner tag",
        "time": MOMENT,
        "id": "evt_123",
    }
    return EventData(**{**base, **fields})


def body_of(request: Any) -> Any:
    assert request.body is not None
    return json.loads(request.body.decode("utf-8"))


# --- body -----------------------------------------------------------------------------


def test_placeholders_are_substituted_into_body_values_at_any_depth() -> None:
    request = render(
        spec(
            body={
                "text": "The rule {{name}} was violated at: {{time}}. Description {{description}}.",
                "meta": {"ids": ["{{event_id}}", "{{ event }}"], "org": "{{organization}}"},
                "webhook": "{{webhook}}",
                "count": 3,
                "ok": True,
                "none": None,
            }
        ),
        event(),
        {},
    )
    assert body_of(request) == {
        "text": f"The rule untagged-volumes was violated at: {MOMENT_TEXT}. "
        "Description 3 volumes have no owner tag.",
        "meta": {"ids": ["evt_123", "new_rule_violation"], "org": "acme"},
        "webhook": "hook",
        "count": 3,
        "ok": True,
        "none": None,
    }


def test_relaxed_json_body_text_is_sent_as_strict_compact_json() -> None:
    request = render(spec(body="{ text: 'rule {{name}}', n: 1, }"), event(), {})
    assert request.body == b'{"text":"rule untagged-volumes","n":1}'


def test_body_is_utf8_json_with_quotes_backslashes_and_newlines_escaped() -> None:
    nasty = 'say "hi"\\ and\nbye — ✓ {{time}}'
    request = render(spec(body={"text": "{{description}}"}), event(description=nasty), {})
    assert body_of(request) == {"text": nasty}
    assert "✓".encode() in request.body  # type: ignore[operator]


def test_body_keys_are_not_substituted() -> None:
    request = render(spec(body={"{{name}}": "{{name}}"}), event(), {})
    assert body_of(request) == {"{{name}}": "untagged-volumes"}


def test_content_type_is_defaulted_for_a_body() -> None:
    request = render(spec(body={"a": 1}), event(), {})
    assert request.headers == {"Content-Type": "application/json"}


def test_content_type_given_in_any_case_is_kept() -> None:
    request = render(
        spec(body={"a": 1}, headers={"content-type": "application/cloudevents+json"}), event(), {}
    )
    assert request.headers == {"content-type": "application/cloudevents+json"}


def test_no_body_means_no_content_type_and_no_bytes() -> None:
    request = render(spec(method="GET", query={"a": "b"}), event(), {})
    assert request.method == "GET"
    assert request.body is None
    assert request.headers == {}


# --- url and query --------------------------------------------------------------------


def test_placeholders_in_the_url_are_percent_encoded() -> None:
    request = render(
        spec(url="https://hooks.acme.example/rules/{{name}}?d={{description}}"),
        event(name="a/b c?&=#%", description="x+y z"),
        {},
    )
    assert request.url == "https://hooks.acme.example/rules/a%2Fb%20c%3F%26%3D%23%25?d=x%2By%20z"


def test_query_values_are_encoded_and_appended_to_an_existing_query() -> None:
    request = render(
        spec(
            method="GET",
            url="https://status.acme.example/notify?source=reconciler",
            query={"rule": "{{name}}", "at": "{{time}}", "note": "a b&c=d", "level": 3},
        ),
        event(name="ünïcode/rule"),
        {},
    )
    assert request.url == (
        "https://status.acme.example/notify?source=reconciler"
        "&rule=%C3%BCn%C3%AFcode%2Frule&at=2026-11-29T21%3A22%3A42Z&note=a%20b%26c%3Dd&level=3"
    )


def test_delete_carries_its_data_in_the_query() -> None:
    request = render(spec(method="DELETE", query={"id": "{{event_id}}"}), event(), {})
    assert (request.method, request.url, request.body) == (
        "DELETE",
        "https://hooks.acme.example/in?id=evt_123",
        None,
    )


# --- secrets --------------------------------------------------------------------------

ENV = {
    "HOOK_URL": "https://hooks.slack.example/services/T0/B0/XYZ",
    "TOKEN": "tok-value-1",
    "QUERY_KEY": "k&y=1",
    "UNRELATED": "unrelated-secret-value",
}


def test_env_references_are_resolved_in_url_headers_and_query() -> None:
    request = render(
        spec(
            url="${env:HOOK_URL}",
            headers={"Authorization": "Bearer ${env:TOKEN}"},
            query={"key": "${env:QUERY_KEY}"},
            body={"text": "{{name}}"},
        ),
        event(),
        ENV,
    )
    assert request.url == "https://hooks.slack.example/services/T0/B0/XYZ?key=k%26y%3D1"
    assert request.headers == {
        "Authorization": "Bearer tok-value-1",
        "Content-Type": "application/json",
    }


@pytest.mark.parametrize(
    "fields",
    [
        {"url": "${env:MISSING_VAR}"},
        {"url": "https://hooks.acme.example/${env:MISSING_VAR}/in"},
        {"headers": {"Authorization": "Bearer ${env:MISSING_VAR}", "X-Token": "${env:TOKEN}"}},
        {"query": {"token": "${env:TOKEN}", "other": "${env:MISSING_VAR}"}},
    ],
    ids=["url", "url-part", "header", "query"],
)
def test_unset_env_var_is_named_and_no_value_is_shown(fields: dict[str, Any]) -> None:
    with pytest.raises(RenderError) as caught:
        render(spec(**fields), event(), ENV)
    message = str(caught.value)
    assert message == "environment variable MISSING_VAR is not set"
    for value in ENV.values():
        assert value not in message


def test_an_unusable_resolved_url_is_refused_without_showing_it() -> None:
    env = {"HOOK_URL": "ftp://user:hunter2@files.acme.example/drop"}
    with pytest.raises(RenderError) as caught:
        render(spec(url="${env:HOOK_URL}"), event(), env)
    message = str(caught.value)
    assert message.startswith("the resolved url is not usable")
    assert "hunter2" not in message and "files.acme.example" not in message


@pytest.mark.parametrize(
    "value",
    [
        "http://[SECHOST4]/x",  # brackets around something that is not an address
        "http://[SECHOST4/x",  # unclosed brackets
        "http://[::1/SECHOST4",
        "https://user:pw@[SECHOST4]:443/x",
        "http://SECHOST4\uff03frag/x",  # a full-width # in the host (NFKC)
        "http://SECHOST4\uff0fx/y",  # a full-width /
    ],
)
@pytest.mark.parametrize("where", ["${env:HOOK_URL}", "https://${env:HOOK_URL}/in"])
def test_a_malformed_resolved_url_is_a_render_error_that_never_shows_it(
    value: str, where: str
) -> None:
    if where.startswith("https://"):
        value = value.removeprefix("http://").removeprefix("https://")
    with pytest.raises(RenderError) as caught:
        Renderer(spec(url=where)).render(event(), {"HOOK_URL": value})
    message = str(caught.value)
    assert message.startswith("the resolved url is not usable")
    assert "SECHOST4" not in message
    # and no exception chained to it, which a traceback would print, holds it either
    error = caught.value
    assert error.__cause__ is None
    assert error.__context__ is None or error.__suppress_context__


def test_a_resolved_header_with_a_line_break_is_refused_without_showing_it() -> None:
    env = {"TOKEN": "abc\r\nX-Injected: yes"}
    with pytest.raises(RenderError) as caught:
        render(spec(headers={"Authorization": "Bearer ${env:TOKEN}"}), event(), env)
    assert str(caught.value) == "header Authorization: its resolved value holds a line break"


def test_preview_without_env_leaves_references_as_written() -> None:
    request = render(
        spec(
            url="${env:HOOK_URL}",
            headers={"Authorization": "Bearer ${env:TOKEN}"},
            query={"key": "${env:QUERY_KEY}", "rule": "{{name}}"},
            body={"text": "{{name}}"},
        ),
        event(),
        None,
    )
    assert request.url.startswith("${env:HOOK_URL}?")
    assert request.headers["Authorization"] == "Bearer ${env:TOKEN}"
    # in the query the reference is percent-encoded like any value; decoded it is intact
    assert parse_qsl(urlsplit(request.url).query) == [
        ("key", "${env:QUERY_KEY}"),
        ("rule", "untagged-volumes"),
    ]
    assert body_of(request) == {"text": "untagged-volumes"}


def test_an_env_reference_inside_an_event_value_is_never_resolved() -> None:
    sneaky = "${env:TOKEN}"
    request = render(
        spec(
            url="https://hooks.acme.example/{{name}}",
            query={"d": "{{description}}"},
            body={"text": "{{name}} {{description}}"},
        ),
        event(name=sneaky, description=sneaky),
        ENV,
    )
    assert ENV["TOKEN"] not in request.url
    assert ENV["TOKEN"].encode() not in request.body  # type: ignore[operator]
    assert body_of(request) == {"text": f"{sneaky} {sneaky}"}
    assert unquote(urlsplit(request.url).path) == f"/{sneaky}"


# --- time -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("moment", "text"),
    [
        (MOMENT, MOMENT_TEXT),
        (
            datetime(2026, 11, 30, 2, 52, 42, tzinfo=timezone(timedelta(hours=5, minutes=30))),
            MOMENT_TEXT,
        ),
        (datetime(2026, 11, 29, 13, 22, 42, tzinfo=timezone(timedelta(hours=-8))), MOMENT_TEXT),
        (datetime(2026, 11, 29, 21, 22, 42), MOMENT_TEXT),  # naive: taken as UTC
        # Whole seconds: a fraction is dropped, never rounded up into the next second.
        (datetime(2026, 1, 2, 3, 4, 5, 120000, tzinfo=UTC), "2026-01-02T03:04:05Z"),
        (datetime(2026, 11, 29, 21, 22, 42, 999999, tzinfo=UTC), MOMENT_TEXT),
        (datetime(2026, 11, 29, 21, 22, 42, 882308), MOMENT_TEXT),
    ],
)
def test_time_is_iso_8601_utc_whole_seconds_with_z(moment: datetime, text: str) -> None:
    assert format_time(moment) == text
    request = render(spec(body={"at": "{{time}}"}), event(time=moment), {})
    assert body_of(request) == {"at": text}


# --- every valid example renders -------------------------------------------------------


@pytest.mark.parametrize(
    "definition",
    load_definitions(VALID).definitions,
    ids=lambda d: d.spec.name,
)
def test_every_valid_example_renders(definition: Any) -> None:
    spec_ = definition.spec
    texts = [spec_.url, spec_.signing_secret or "", *spec_.headers.values(), *spec_.query.values()]
    env = {name: f"value-of-{name}" for text in texts for name in templates.env_names(text)}
    request = render(spec_, event(event=spec_.event.value, organization=spec_.key[0]), env)
    assert request.method == spec_.method.value
    url = httpx.URL(request.url)
    assert url.scheme == "https" and url.host
    if spec_.body is not None:
        assert isinstance(body_of(request), dict)
        assert "{{" not in request.body.decode()  # type: ignore[union-attr]
    assert "${env:" not in request.url and "{{" not in request.url


# --- properties -----------------------------------------------------------------------

# Lone surrogates cannot be encoded as UTF-8 and never come out of a decoded request.
_any_text = st.text(st.characters(exclude_categories=["Cs"]))
_tricky = st.sampled_from(
    [
        "{{name}}",
        "{{time}}",
        "{{ description }}",
        "${env:SECRET}",
        "${env:",
        '"',
        "\\",
        "\\u0000",
        "\n",
        "\r\n",
        "\x00",
        "\x7f",
        "%",
        "%2F",
        "+",
        "&",
        "=",
        "#",
        "?",
        "/",
        "'",
        "}}{{",
        "\u2028",
        "\U0001f600",
    ]
)
values = st.lists(st.one_of(_any_text, _tricky), max_size=6).map("".join)

SECRET = "s3cr3t-from-env"
PROPERTY_SPEC = spec(
    url="https://hooks.acme.example/r/{{name}}/{{description}}?e={{event_id}}",
    query={
        "n": "{{name}}",
        "o": "{{organization}}",
        "s": "${env:SECRET}",
        "mix": "{{name}}-${env:SECRET}",
    },
    body={
        "text": "A {{name}} B {{time}} C",
        "list": ["{{description}}", 1, {"deep": "{{event_id}}{{organization}}"}],
        "plain": "no placeholders",
    },
)


@settings(deadline=None)
@given(name=values, description=values, event_id=values, organization=values)
def test_any_event_values_give_valid_json_substituted_once(
    name: str, description: str, event_id: str, organization: str
) -> None:
    request = render(
        PROPERTY_SPEC,
        event(name=name, description=description, id=event_id, organization=organization),
        {"SECRET": SECRET},
    )
    assert request.body is not None
    assert body_of(request) == {
        "text": f"A {name} B {MOMENT_TEXT} C",
        "list": [description, 1, {"deep": event_id + organization}],
        "plain": "no placeholders",
    }


@settings(deadline=None)
@given(name=values, description=values, event_id=values, organization=values)
def test_any_event_values_give_a_url_that_decodes_back(
    name: str, description: str, event_id: str, organization: str
) -> None:
    # "." and ".." become dot segments: a known bug, see test_known_bugs.py
    assume(name not in (".", "..") and description not in (".", ".."))
    request = render(
        PROPERTY_SPEC,
        event(name=name, description=description, id=event_id, organization=organization),
        {"SECRET": SECRET},
    )
    url = request.url
    assert all(33 <= ord(c) < 127 for c in url), url  # printable ASCII, no spaces
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.fragment) == ("https", "hooks.acme.example", "")
    prefix, raw_name, raw_description = parts.path.split("/")[1:]
    assert prefix == "r"
    assert (unquote(raw_name), unquote(raw_description)) == (name, description)
    assert parse_qsl(parts.query, keep_blank_values=True) == [
        ("e", event_id),
        ("n", name),
        ("o", organization),
        ("s", SECRET),
        ("mix", f"{name}-{SECRET}"),
    ]
    parsed = httpx.URL(url)
    assert parsed.host == "hooks.acme.example"
    assert parsed.path == f"/r/{name}/{description}"
    assert parsed.params.get_list("n") == [name]
    assert parsed.params.get_list("s") == [SECRET]


@settings(deadline=None)
@given(
    moment=st.datetimes(
        min_value=datetime(1970, 1, 2),
        max_value=datetime(9998, 12, 30),
        timezones=st.sampled_from(
            [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-11))]
        ),
    )
)
def test_any_time_formats_as_utc_iso_8601_whole_seconds_with_z(moment: datetime) -> None:
    text = format_time(moment)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", text), text
    assert datetime.fromisoformat(text) == moment.replace(microsecond=0)


# --- the prepared body against substituting into the whole body --------------------

_PIECES = [
    "{{name}}", "{{ description }}", "{{time}}", "{{event_id}}", "${env:SECRET}",
    "{{", "}}", "{", "}", '"', "\\", "\n", "\u2028", "\U0001f600", "é", "a", " ",
]  # fmt: skip
_body_text = st.lists(st.sampled_from(_PIECES), max_size=6).map("".join)
_body_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
    _body_text,
)  # fmt: skip
_body_values = st.recursive(
    _body_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(_body_text, inner, max_size=4)
    ),
    max_leaves=12,
)
bodies = st.one_of(  # a body written as YAML data: an object or an array
    st.lists(_body_values, max_size=4), st.dictionaries(_body_text, _body_values, max_size=4)
)


def substituted_whole(body: Any, values: dict[str, str]) -> str:
    """The body as it was rendered before bodies were prepared: every string value
    substituted in the parsed body, then the whole written as compact JSON."""

    def walk(value: Any) -> Any:
        if isinstance(value, str):
            return templates.substitute(value, values.__getitem__, None)
        if isinstance(value, dict):
            return {key: walk(item) for key, item in value.items()}
        if isinstance(value, list):
            return [walk(item) for item in value]
        return value

    return json.dumps(walk(body), ensure_ascii=False, separators=(",", ":"), allow_nan=False)


@settings(deadline=None, max_examples=300)
@given(body=bodies, name=values, description=values)
def test_a_prepared_body_is_the_whole_body_substituted(
    body: Any, name: str, description: str
) -> None:
    happened = event(name=name, description=description)
    renderer = Renderer(spec(body=body))
    try:
        expected = substituted_whole(body, happened.placeholder_values("hook"))
    except KeyError:  # a placeholder no event has, such as {{}}: refused alike
        with pytest.raises(KeyError):
            renderer.render(happened, {"SECRET": SECRET})
        return
    request = renderer.render(happened, {"SECRET": SECRET})
    assert request.body == expected.encode("utf-8")
    assert request.headers == {"Content-Type": "application/json"}


def test_one_renderer_renders_each_event_afresh() -> None:
    renderer = Renderer(PROPERTY_SPEC)
    first = renderer.render(event(name="one"), {"SECRET": SECRET})
    second = renderer.render(event(name="two"), {"SECRET": "rotated"})
    assert body_of(first)["text"] == f"A one B {MOMENT_TEXT} C"
    assert body_of(second)["text"] == f"A two B {MOMENT_TEXT} C"
    assert dict(parse_qsl(urlsplit(first.url).query))["s"] == SECRET
    assert dict(parse_qsl(urlsplit(second.url).query))["s"] == "rotated"  # env read per render
