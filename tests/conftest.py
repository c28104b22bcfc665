"""Fixtures shared by the test modules."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from reconciler.loader import load_definitions


@pytest.fixture
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


@pytest.fixture
def problem_lines(monkeypatch: pytest.MonkeyPatch) -> Callable[[Path], list[str]]:
    """Load a folder with the working directory set to it, so that each problem's
    path is relative to that folder, as in the example cases' expected.txt."""

    def load(folder: Path) -> list[str]:
        monkeypatch.chdir(folder)
        return [str(problem) for problem in load_definitions(folder).problems]

    return load
