"""How audit log entries are shown."""

from __future__ import annotations

from reconciler.diff import field_changes
from reconciler.plan_report import field_line
from reconciler.store.base import AuditEntry


def entry_text(entry: AuditEntry) -> str:
    r = entry.record
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
