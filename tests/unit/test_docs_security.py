"""docs/security.md names the test that shows each promise: every one must exist."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _named_tests(text: str) -> list[tuple[str, str]]:
    """(test file, test name) for each `tests/file.py::name` and each `::name` that
    follows a file named earlier in the same paragraph."""
    named = []
    current = None
    for line in text.splitlines():
        if not line.strip():
            current = None
        for span in re.findall(r"`([^`]+)`", line):
            match = re.fullmatch(r"(tests/[\w/]+\.py)?(?:::(\w+))?", span)
            if match is None or not (match.group(1) or match.group(2)):
                continue
            current = match.group(1) or current
            if match.group(2):
                assert current is not None, f"{span} names no file: {line}"
                named.append((current, match.group(2)))
    return named


def _functions(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}


def test_every_test_the_security_page_names_exists() -> None:
    named = _named_tests((ROOT / "docs" / "security.md").read_text(encoding="utf-8"))
    assert len(named) >= 20
    missing = [
        f"{file}::{name}"
        for file, name in named
        if not (ROOT / file).is_file() or name not in _functions(ROOT / file)
    ]
    assert missing == []
