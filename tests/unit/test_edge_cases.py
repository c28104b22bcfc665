"""Edge cases of loading and rendering: odd tags, hidden rules, hostile values."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from reconciler.model import WebhookSpec
from reconciler.render import EventData, RenderError, render

BASE = "name: hook\nevent: new_rule_violation\nmethod: POST\nurl: https://hooks.acme.example/in\n"

ProblemLines = Callable[[Path], list[str]]


def _folder(tmp_path: Path, text: str) -> Path:
    (tmp_path / "acme").mkdir()
    (tmp_path / "acme" / "hook.yaml").write_text(text, encoding="utf-8")
    return tmp_path


@pytest.mark.parametrize(
    "line",
    ["timeout: !!float abc", "description: !!int abc", "enabled: !!bool maybe"],
    ids=["float", "int", "bool"],
)
def test_explicit_core_tag_with_a_bad_value_is_a_problem_not_a_crash(
    tmp_path: Path, problem_lines: ProblemLines, line: str
) -> None:
    lines = problem_lines(_folder(tmp_path, BASE + line + "\n"))
    assert len(lines) == 1
    assert lines[0].startswith("acme/hook.yaml:5:")


def test_rule_problems_are_reported_alongside_type_problems(
    tmp_path: Path, problem_lines: ProblemLines
) -> None:
    text = (
        "name: Bad Name\nevent: new_rule_violation\nmethod: GET\n"
        "url: https://hooks.acme.example/in\nbody:\n  text: '{{nmae}}'\n"
    )
    lines = problem_lines(_folder(tmp_path, text))
    assert any(line.startswith("acme/hook.yaml:1:7: name: 'Bad Name'") for line in lines)
    assert any("body is not allowed with GET" in line for line in lines)


def test_malformed_env_reference_in_url_is_named_as_such(
    tmp_path: Path, problem_lines: ProblemLines
) -> None:
    text = "name: hook\nevent: new_rule_violation\nmethod: POST\nurl: ${env:ACME-URL}\n"
    lines = problem_lines(_folder(tmp_path, text))
    assert len(lines) == 1
    assert "malformed secret reference '${env:ACME-URL}'" in lines[0]


SPEC = WebhookSpec.model_validate(
    {
        "name": "hook",
        "organization": "acme",
        "event": "new_rule_violation",
        "method": "POST",
        "url": "https://hooks.acme.example/orgs/{{organization}}/rules/{{name}}/notify",
    }
)


def _event(name: str, organization: str = "acme") -> EventData:
    moment = datetime(2026, 11, 29, tzinfo=UTC)
    return EventData("new_rule_violation", organization, name, "d", moment, "evt_1")


@pytest.mark.parametrize("value", ["..", "."])
def test_dot_segment_values_stay_inside_their_path_segment(value: str) -> None:
    request = render(SPEC, _event(name=value, organization=value), {})
    sent = httpx.Request(request.method, request.url)
    assert sent.url.path == f"/orgs/{value}/rules/{value}/notify"


def test_an_unencodable_event_value_is_a_render_error() -> None:
    with pytest.raises(RenderError, match="not valid Unicode"):
        render(SPEC, _event(name="\ud800"), {})
