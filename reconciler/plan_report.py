"""How a plan is shown: text (coloured on a terminal), JSON, or Markdown for a
pull-request comment. Every value shown passes through the secret masks."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from itertools import groupby
from typing import Any

import click

from reconciler.diff import MISSING, FieldChange
from reconciler.envaccess import SHARED_ENV_SHOWN
from reconciler.model import WebhookSpec
from reconciler.plan import Change, Plan
from reconciler.problems import Problem
from reconciler.provenance import short
from reconciler.secrets import mask_at, mask_spec

_FIELD_ORDER = list(WebhookSpec.model_fields)
MARKDOWN_MARKER = "<!-- reconciler-plan -->"
# What a delete does, exactly: the delivery log stays for auditors (never sent again).
UNRECOVERABLE = (
    "the definition is gone for good and cannot be recovered; "
    "its delivery history is kept until retention removes it"
)


def summary_line(plan: Plan) -> str:
    counts = plan.counts()
    parts = [
        f"{counts['create']} to create",
        f"{counts['update']} to update",
        f"{counts['delete']} to delete",
        f"{plan.unchanged} unchanged",
    ]
    if plan.drift:
        parts.append(f"{len(plan.drift)} drifted")
    if plan.shared_env is not None:
        changed = len(plan.shared_env.lines())
        parts.append(f"{changed} shared variable{'s' if changed != 1 else ''} to change")
    return "Plan: " + ", ".join(parts) + "."


_SHARED_MARK = {"share": ("create", "+"), "unshare": ("delete", "-"), "update": ("update", "~")}


def _shared_env_lines(plan: Plan) -> Iterator[tuple[str, str]]:
    """The shared list's changes: names and reasons, never a value."""
    if plan.shared_env is None:
        return
    yield "", f"Shared variables ({SHARED_ENV_SHOWN}; every organization may read them)"
    for action, name, reason in plan.shared_env.lines():
        style, mark = _SHARED_MARK[action]
        yield style, f"  {mark} {name}  ({reason})"


def _value(value: Any) -> str:
    if value is MISSING:
        return "(unset)"
    return json.dumps(value, ensure_ascii=False)


def field_line(change: FieldChange) -> str:
    old, new = mask_at(change.path, change.old), mask_at(change.path, change.new)
    if change.old is not MISSING and change.new is not MISSING and old == new:
        return f"{change.dotted}: {_value(old)} (changed)"
    return f"{change.dotted}: {_value(old)} -> {_value(new)}"


def _change_lines(change: Change) -> Iterator[tuple[str, str]]:
    """(style, line) pairs for one change, indented under its organization."""
    if change.action == "create":
        yield "create", f"  + {change.name}"
        shown = mask_spec(change.after or {})
        for key in _FIELD_ORDER:
            if key in shown and key not in ("name", "organization"):
                yield "", f"      {key}: {_value(shown[key])}"
    elif change.action == "update":
        note = f"  (resumes it; paused: {change.resumes})" if change.resumes else ""
        yield "update", f"  ~ {change.name}{note}"
        for field_change in change.fields:
            yield "", f"      {field_line(field_change)}"
    else:
        protected = "; PROTECTED: will not be deleted" if change.protected else ""
        yield "delete", f"  - {change.name}  ({UNRECOVERABLE}{protected})"


def _drift_lines(plan: Plan) -> Iterator[tuple[str, str]]:
    if not plan.drift:
        return
    yield "", ""
    yield "drift", "Drift (live state changed outside apply; apply restores the definitions):"
    for drift in plan.drift:
        yield "drift", f"  ! {drift.organization}/{drift.name}"
        if drift.paused_reason:
            yield "", f"      paused: {drift.paused_reason}"
        for field_change in drift.fields:
            yield "", f"      {field_line(field_change)} (last applied -> live)"


_STYLES: dict[str, dict[str, Any]] = {
    "create": {"fg": "green"},
    "update": {"fg": "yellow"},
    "delete": {"fg": "red", "bold": True},
    "drift": {"fg": "magenta"},
    "refusal": {"fg": "red"},
}


def text(plan: Plan, refusals: list[str], *, color: bool = False) -> str:
    paint: Callable[[str, str], str] = (
        (lambda style, line: click.style(line, **_STYLES[style]) if style else line)
        if color
        else (lambda _style, line: line)
    )
    lines: list[str] = []
    for org, changes in groupby(plan.changes, key=lambda c: c.organization):
        lines.append(f"Organization {org}")
        for change in changes:
            lines.extend(paint(style, line) for style, line in _change_lines(change))
    lines.extend(paint(style, line) for style, line in _shared_env_lines(plan))
    if not plan.has_changes:
        lines.append("No changes: the live state matches the definitions.")
    lines.extend(paint(style, line) for style, line in _drift_lines(plan))
    lines.append("")
    check = plan.commit_check
    if check is not None and check.live is not None:
        lines.append(check.live_line())
        if check.warning():
            lines.append(paint("drift", f"Warning: {check.warning()}"))
    lines.append(summary_line(plan))
    if refusals:
        lines.append(paint("refusal", "Apply will refuse this plan unless:"))
        lines.extend(paint("refusal", f"  - {reason}") for reason in refusals)
    return "\n".join(lines)


def as_json(plan: Plan, refusals: list[str]) -> str:
    data = plan.as_json()
    data["refusals"] = refusals
    data["live_commit"] = plan.commit_check.as_json() if plan.commit_check else None
    return json.dumps(data, indent=2, ensure_ascii=False)


def markdown(plan: Plan, refusals: list[str]) -> str:
    scope = f" (organization `{plan.organization}`)" if plan.organization else ""
    out = [MARKDOWN_MARKER, f"### reconciler plan{scope}", "", f"**{summary_line(plan)}**", ""]
    if refusals:
        out.append("> [!WARNING]")
        out.append("> Apply will refuse this plan unless:")
        out.extend(f"> - {reason}" for reason in refusals)
        out.append("")
    for org, changes in groupby(plan.changes, key=lambda c: c.organization):
        out.append(f"#### Organization `{org}`")
        out.append("")
        out.append("```diff")
        for change in changes:
            # GitHub colours a diff block by each line's first character.
            prefix = _DIFF_PREFIX[change.action]
            for style, line in _change_lines(change):
                text_ = line.strip()
                if style:
                    out.append(f"{prefix} {text_[2:]}")
                else:
                    out.append(f"{prefix if change.action != 'update' else ' '}     {text_}")
        out.append("```")
        out.append("")
    shared = list(_shared_env_lines(plan))
    if shared:
        out.append(f"#### {shared[0][1]}")
        out.append("")
        out.append("```diff")
        out.extend(line.strip() for _style, line in shared[1:])
        out.append("```")
        out.append("")
    if plan.drift:
        out.append("#### Drift")
        out.append("")
        out.append("```")
        out.extend(line for _style, line in list(_drift_lines(plan))[2:])
        out.append("```")
        out.append("")
    check = plan.commit_check
    live = ""
    if check is not None and check.live is not None:
        entry = check.live
        live = (
            f"live commit `{short(check.live_commit)}` (applied by {entry.record.actor} "
            f"at {entry.at}) · "
        )
    if check is not None and check.warning():
        out.append(f"> [!NOTE]\n> {check.warning()}")
        out.append("")
    out.append(
        f"<sub>state serial {plan.serial} · {live}checksum `{plan.checksum()[:19]}` · "
        "deletes are unrecoverable</sub>"
    )
    return "\n".join(out)


# The text's markers, one per action (create +, update ~, delete -; drift is !):
# GitHub colours + and - lines of a diff block and leaves ~ and ! lines plain.
_DIFF_PREFIX = {"create": "+", "update": "~", "delete": "-"}

REPORTERS: dict[str, Callable[[Plan, list[str]], str]] = {
    "json": as_json,
    "markdown": markdown,
}


# When the definitions are invalid nothing is planned: the problems come out in the
# format asked for, so a pull-request comment or a JSON consumer still gets an answer.


def _problem_json(problem: Problem) -> dict[str, object]:
    return {
        "file": problem.location.path,
        "line": problem.location.line,
        "column": problem.location.col,
        "field": problem.field,
        "severity": problem.severity,
        "message": problem.message,
    }


def invalid_json(problems: list[Problem]) -> str:
    document = {
        "valid": False,
        "planned": False,
        "errors": sum(1 for p in problems if p.severity == "error"),
        "problems": [_problem_json(p) for p in problems],
    }
    return json.dumps(document, indent=2, ensure_ascii=False)


def invalid_markdown(problems: list[Problem]) -> str:
    errors = sum(1 for p in problems if p.severity == "error")
    out = [
        MARKDOWN_MARKER,
        "### reconciler plan",
        "",
        f":x: **The definitions are invalid ({errors} error{'s' if errors != 1 else ''}): "
        "nothing was planned.**",
        "",
    ]
    for problem in problems:
        where = str(problem.location)
        said = str(problem)[len(where) + 2 :]  # one line: line breaks come escaped
        out.append(f"- `{where}`: {_md_escape(said)}")
    return "\n".join(out)


def _md_escape(value: str) -> str:
    """A message in running text: no HTML, no markdown that changes its meaning."""
    return "".join(f"\\{c}" if c in "\\`*_[]<>|#" else c for c in value)


INVALID_REPORTERS: dict[str, Callable[[list[Problem]], str]] = {
    "json": invalid_json,
    "markdown": invalid_markdown,
}
