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


def parse_json_text(text: str) -> Any:
    """Strict JSON first (fast, and exact errors), then the relaxed JSON5 form."""
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as strict_error:
        try:
            value = json5.loads(text, allow_duplicate_keys=False)
        except ValueError as exc:
            raise _relaxed_error(str(exc), strict_error) from None
    check_json_value(value)
    return value


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise BodyError(f'duplicate key "{key}" in the JSON body')
        result[key] = value
    return result


def _relaxed_error(message: str, strict: json.JSONDecodeError) -> BodyError:
    if message.startswith("Duplicate key"):
        return BodyError(message.replace("found in object", "in the JSON body"))
    match = _JSON5_POSITION.search(message)
    if match:
        line, what, col = int(match.group(1)), match.group(2), int(match.group(3))
        return BodyError(f"body is not valid JSON: {what}", line, col)
    return BodyError(f"body is not valid JSON: {strict.msg}", strict.lineno, strict.colno)


def check_json_value(value: Any, where: str = "body") -> None:
    """Refuse what JSON cannot carry: non-finite numbers, non-string keys."""
    if isinstance(value, float) and not math.isfinite(value):
        raise BodyError(f"{where}: {value} is not a JSON number")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise BodyError(f"{where}: object keys must be strings, not {key!r}")
            check_json_value(item, f"{where}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            check_json_value(item, f"{where}[{index}]")
    elif value is not None and not isinstance(value, str | int | float | bool):
        raise BodyError(f"{where}: {type(value).__name__} is not a JSON value")


def dumps(value: Any) -> str:
    """Strict, compact JSON as sent on the wire."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
