"""The body's JSON validator: strict JSON and the relaxed (JSON5) form mean the same value."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.jsonbody import BodyError, dumps, parse_json_text

_IDENTIFIER = re.compile(r"[A-Za-z_$][A-Za-z0-9_$]*")
_text = st.text(st.characters(exclude_categories=["Cs"]))
_keys = st.one_of(_text, st.from_regex(_IDENTIFIER, fullmatch=True))
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | _text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_keys, children, max_size=4),
    max_leaves=12,
)


def _single_quoted(text: str) -> str:
    out = []
    for char in text:
        if char in "\\'":
            out.append("\\" + char)
        elif char == "\n":
            out.append("\\n")
        elif ord(char) < 0x20 or char in "\u2028\u2029":
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return "'" + "".join(out) + "'"


def relaxed(value: Any, draw: Any) -> str:
    """`value` written the way people write relaxed JSON by hand, style chosen at random."""
    if isinstance(value, str):
        return _single_quoted(value) if draw(st.booleans()) else json.dumps(value)
    if isinstance(value, list):
        items = [relaxed(item, draw) for item in value]
        trailing = "," if items and draw(st.booleans()) else ""
        return "[" + ", ".join(items) + trailing + "]"
    if isinstance(value, dict):
        pairs = []
        for key, item in value.items():
            bare = _IDENTIFIER.fullmatch(key) and draw(st.booleans())
            shown = key if bare else relaxed(key, draw)
            pairs.append(f"{shown}: {relaxed(item, draw)}")
        trailing = "," if pairs and draw(st.booleans()) else ""
        return "{ " + ",\n  ".join(pairs) + trailing + " }"
    return json.dumps(value)


@settings(deadline=None)
@given(value=json_values)
def test_strict_json_text_parses_to_its_value(value: Any) -> None:
    assert parse_json_text(json.dumps(value)) == value
    assert parse_json_text(json.dumps(value, indent=2, ensure_ascii=False)) == value


@settings(deadline=None)
@given(value=json_values, data=st.data())
def test_relaxed_json_text_parses_to_the_same_value(value: Any, data: st.DataObject) -> None:
    text = relaxed(value, data.draw)
    assert parse_json_text(text) == value


@settings(deadline=None)
@given(value=json_values)
def test_what_is_sent_is_strict_json_of_the_value(value: Any) -> None:
    assert json.loads(dumps(value)) == value


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("{ text: 'The rule {{name}} was violated' }", {"text": "The rule {{name}} was violated"}),
        ("{'it\\'s': 'say \"hi\"'}", {"it's": 'say "hi"'}),
        ("{a: [1, 2,], b: {c: null,},}", {"a": [1, 2], "b": {"c": None}}),
        ("{ // a comment\n  a: 0x10, /* another */ b: +1, c: .5 }", {"a": 16, "b": 1, "c": 0.5}),
        ('{"k": "a: b, }"}', {"k": "a: b, }"}),
        ("{k: 'a: b, }'}", {"k": "a: b, }"}),
        ("'just text'", "just text"),
    ],
)
def test_relaxed_forms(text: str, value: Any) -> None:
    assert parse_json_text(text) == value


@pytest.mark.parametrize(
    "text",
    [
        "",
        "hello world",
        '{"a": 1',
        '{"a": 1} extra',
        '{"a": {{time}}}',
        '{"a": 1, "a": 2}',
        "{a: 1, a: 2}",
        '{"a": NaN}',
        "{a: Infinity}",
        "[-Infinity]",
        "[,]",
        "{,}",
        "[1,,]",
    ],
)
def test_not_json_is_a_body_error(text: str) -> None:
    with pytest.raises(BodyError):
        parse_json_text(text)


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ('{"at": {{time}}}', 'a placeholder must sit inside a string, e.g. "{{time}}"'),
        ("hello world", "body text must be JSON"),
    ],
)
def test_common_mistakes_get_a_hint(text: str, hint: str) -> None:
    with pytest.raises(BodyError, match="not valid JSON") as caught:
        parse_json_text(text)
    assert hint in caught.value.message
