"""How audit log entries are shown."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from reconciler.diff import field_changes
from reconciler.moments import parse_at
from reconciler.plan_report import field_line
from reconciler.secrets import mask_spec
from reconciler.store.base import AuditEntry


def shown(entry: AuditEntry) -> AuditEntry:
    """The entry with its definitions masked again by today's rule: apply stores them
    masked, but a row written under an older rule may still hold a literal credential."""
    r = entry.record
    return replace(
        entry,
        record=replace(
            r,
            before=mask_spec(r.before) if r.before is not None else None,
            after=mask_spec(r.after) if r.after is not None else None,
        ),
    )


def selected(
    entries: Iterable[AuditEntry],
    *,
    since: float | None = None,
    until: float | None = None,
    actor: str | None = None,
    action: str | None = None,
    limit: int | None = None,
) -> list[AuditEntry]:
    """The entries (newest first) recorded in [since, until), by `actor` (exactly, as
    shown), of `action` (create, update, delete, pause, resume, breaker-open...), at
    most `limit` of them."""
    out: list[AuditEntry] = []
    for entry in entries:
        if limit is not None and len(out) >= limit:
            break
        at = parse_at(entry.at)
        if since is not None and at < since:
            continue
        if until is not None and at >= until:
            continue
        if actor is not None and entry.record.actor != actor:
            continue
        if action is not None and entry.record.action != action:
            continue
        out.append(entry)
    return out


def entry_json(entry: AuditEntry) -> dict[str, Any]:
    return shown(entry).as_json()


def entry_text(entry: AuditEntry) -> str:
    r = shown(entry).record
    commit = (
        f" commit {r.git_commit[:12]}{'+dirty' if r.git_commit.endswith('+dirty') else ''}"
        if r.git_commit
        else ""
    )
    plan = f" plan {r.plan_checksum[:19]}" if r.plan_checksum else ""
    lines = [f"{entry.at}  {r.action:<6}  {r.organization}/{r.name}  by {r.actor}{commit}{plan}"]
    if r.action == "update" and r.before is not None and r.after is not None:
        lines.extend(f"    {field_line(c)}" for c in field_changes(r.before, r.after))
    elif r.action in ("share", "unshare"):
        reason = (r.after or r.before or {}).get("reason")
        lines.append(f"    reason: {reason}")
    elif r.action == "create" and r.after is not None:
        after = r.after
        lines.append(f"    {after.get('event')} {after.get('method')} {after.get('url')}")
    if r.note:
        lines.append(f"    note: {r.note}")
    return "\n".join(lines)
