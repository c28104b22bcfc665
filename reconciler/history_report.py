"""How audit log entries are shown."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from reconciler.diff import field_changes
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
