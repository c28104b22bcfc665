"""How `validate` shows what it found: text, JSON, or GitHub workflow commands.

Each reporter takes the load result and returns the lines to print.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from reconciler.loader import LoadResult
from reconciler.problems import Problem


def count(n: int, word: str, plural: str | None = None) -> str:
    return f"{n} {word if n == 1 else plural or word + 's'}"


def text(result: LoadResult) -> list[str]:
    """One `path:line:col: message` line per problem, then a summary line."""
    lines = [str(problem) for problem in result.problems]
    organizations = {d.spec.key[0] for d in result.definitions}
    warnings = count(len(result.warnings), "warning")
    if result.ok:
        lines.append(
            f"valid: {count(len(result.definitions), 'definition')} in "
            f"{count(len(organizations), 'organization')}, {warnings}."
        )
    else:
        lines.append(
            f"invalid: {count(len(result.errors), 'error')}, {warnings} in "
            f"{count(result.files, 'file')}."
        )
    return lines


def as_json(result: LoadResult) -> list[str]:
    document = {
        "valid": result.ok,
        "files": result.files,
        "definitions": len(result.definitions),
        "problems": [p.as_json() for p in result.problems],
    }
    return [json.dumps(document, indent=2)]


def github(result: LoadResult) -> list[str]:
    """GitHub Actions workflow commands: each problem an annotation on its file and
    line (`::error file=...,line=...,col=...::message`, warnings as `::warning`)."""
    return [annotation(problem) for problem in result.problems]


def annotation(problem: Problem) -> str:
    where = problem.location
    properties = ",".join(
        f"{key}={_escape_property(str(value))}"
        for key, value in (("file", where.path), ("line", where.line), ("col", where.col))
    )
    return f"::{problem.severity} {properties}::{_escape_data(problem.message)}"


# The runner's own escaping rules for workflow commands: data may not hold a line
# break, and a property value may not hold the ',' and ':' that delimit properties.
def _escape_data(value: str) -> str:
    return value.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(value: str) -> str:
    return _escape_data(value).replace(":", "%3A").replace(",", "%2C")


REPORTERS: dict[str, Callable[[LoadResult], list[str]]] = {
    "text": text,
    "json": as_json,
    "github": github,
}
