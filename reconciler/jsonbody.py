"""The request body's JSON validator.

A body is given either as YAML data or as JSON text. JSON text may be strict
JSON or the relaxed form the product page shows (`{ text: '...' }`: unquoted
keys, single quotes), which is JSON5. Either way the result is a JSON value, and
what is sent is always strict JSON.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import json5

_JSON5_POSITION = re.compile(r"<string>:(\d+) (.*) at column (\d+)")


class BodyError(ValueError):
    """A body that is not JSON; line and column are 1-based, within the text."""

    def __init__(self, message: str, line: int | None = None, col: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.col = col


# How deep a body may nest, as for the YAML a definition is written in
# (yamlsource.MAX_DEPTH): a fixed limit, not whatever stack the parser has left.
MAX_DEPTH = 64
_TOO_DEEP = f"nested more than {MAX_DEPTH} levels deep"


def parse_json_text(text: str) -> Any:
    """Strict JSON first, then the common relaxed forms translated to strict JSON,
    then the full JSON5 parser (slow, but it decides and explains every other case)."""
    try:
        value = _parse(text)
    except RecursionError:  # nested far past MAX_DEPTH: the parsers recurse
        raise BodyError(_TOO_DEEP) from None
    check_json_value(value)
    return value


def _parse(text: str) -> Any:
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as strict_error:
        try:
            return json.loads(_relaxed_to_strict(text), object_pairs_hook=_no_duplicates)
        except json.JSONDecodeError:
            try:
                return json5.loads(text, allow_duplicate_keys=False)
            except ValueError as exc:
                raise _relaxed_error(str(exc), strict_error) from None


# The relaxed forms people write by hand: single-quoted strings, unquoted keys,
# trailing commas. Strings are matched first, so nothing inside one is touched.
_RELAXED_TOKEN = re.compile(
    r"""(?P<dq>"(?:[^"\\\n]|\\.)*")
    |(?P<sq>'(?:[^'\\\n]|\\.)*')
    |(?P<key>[A-Za-z_$][A-Za-z0-9_$]*)(?=\s*:)
    |(?P<comma>,)(?=\s*[}\]])""",
    re.VERBOSE,
)
_UNESCAPED_DQ = re.compile(r'(?<!\\)((?:\\\\)*)"')


def _relaxed_to_strict(text: str) -> str:
    def translate(match: re.Match[str]) -> str:
        kind = match.lastgroup
        token = match.group(0)
        if kind == "sq":
            inner = token[1:-1].replace("\\'", "'")
            return '"' + _UNESCAPED_DQ.sub(r'\1\\"', inner) + '"'
        if kind == "key":
            return f'"{token}"'
        if kind == "comma":
            # A trailing comma follows a value; "[,]" and "{,}" are not JSON5 either.
            before = match.string[: match.start()].rstrip()
            return "" if before[-1:] not in ("[", "{", ",") else token
        return token

    return _RELAXED_TOKEN.sub(translate, text)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise BodyError(f'duplicate key "{key}" in the JSON body')
        result[key] = value
    return result


def _relaxed_error(message: str, strict: json.JSONDecodeError) -> BodyError:
    if message.startswith("Duplicate key"):
        key = message.split('"')[1] if '"' in message else "?"
        return BodyError(f'duplicate key "{key}" in the JSON body')
    match = _JSON5_POSITION.search(message)
    if match:
        line, what, col = int(match.group(1)), match.group(2), int(match.group(3))
    else:
        line, what, col = strict.lineno, strict.msg, strict.colno
    return BodyError(
        f"not valid JSON: {what} (line {line}, column {col} of the body){_hint(strict.doc)}",
        line,
        col,
    )


_BARE_PLACEHOLDER = re.compile(r"[:\[,]\s*\{\{")


def _hint(text: str) -> str:
    stripped = text.strip()
    if _BARE_PLACEHOLDER.search(text):
        return '; a placeholder must sit inside a string, e.g. "{{time}}"'
    if stripped and stripped[0] not in "{[\"'-0123456789tfn/":
        return "; body text must be JSON: write plain text as YAML data (body: {text: ...})"
    return ""


def check_json_value(value: Any, where: str = "", depth: int = 1) -> None:
    """Refuse what JSON cannot carry: non-finite numbers, non-string keys, and more
    than MAX_DEPTH objects and arrays inside one another."""
    if isinstance(value, float) and not math.isfinite(value):
        shown = "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
        raise BodyError(f"{where or 'the value'} is {shown}, which JSON cannot carry")
    if isinstance(value, dict | list) and depth > MAX_DEPTH:
        raise BodyError(_TOO_DEEP)
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise BodyError(f"{where or 'the value'}: object keys must be text, not {key!r}")
            check_json_value(item, f"{where}.{key}" if where else key, depth + 1)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            check_json_value(item, f"{where}[{index}]", depth + 1)
    elif value is not None and not isinstance(value, str | int | float | bool):
        raise BodyError(f"{where or 'the value'}: {type(value).__name__} is not a JSON value")


_WIRE = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def dumps(value: Any) -> str:
    """Strict, compact JSON as sent on the wire (a string alone, as it is written
    inside any value)."""
    return _WIRE.encode(value)
