"""The Store interface: the live state every backend keeps.

A backend holds the applied webhooks (with the state's lineage and serial, for
stale-plan detection), the append-only audit log and the apply lock. Every
backend passes the same contract suite (tests/support/store_contract.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from reconciler.envaccess import EnvAccess
from reconciler.errors import NoState


def no_state(url: str, reason: str) -> NoState:
    """The one message for a state that is not where the URL points."""
    return NoState(
        f"no state at {url}: {reason} (only `reconciler apply` and `reconciler migrate` "
        "make a state; check --state or RECONCILER_STATE)"
    )


@dataclass(frozen=True)
class StateInfo:
    lineage: str  # a random id given to the state when it was created
    serial: int  # grows with every change to the live webhooks


@dataclass(frozen=True)
class LiveWebhook:
    organization: str
    name: str
    spec: str  # canonical JSON of the definition as it is live now
    applied: str  # canonical JSON as the last apply wrote it
    paused_reason: str | None  # set by the dispatcher, e.g. after HTTP 410
    updated_at: str

    @property
    def key(self) -> tuple[str, str]:
        return (self.organization, self.name)

    def spec_dict(self) -> dict[str, Any]:
        spec: dict[str, Any] = json.loads(self.spec)
        return spec

    @property
    def drifted(self) -> bool:
        return self.spec != self.applied or self.paused_reason is not None


@dataclass(frozen=True)
class Write:
    """One change to a live webhook: put (create or replace) or delete."""

    kind: Literal["put", "delete"]
    organization: str
    name: str
    spec: str | None = None  # canonical JSON, for put


@dataclass(frozen=True)
class AuditRecord:
    """One line of the audit log; before/after hold references, never secret values."""

    action: str  # create | update | delete | pause | resume | breaker-open | breaker-close
    organization: str
    name: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    actor: str
    git_commit: str | None = None
    plan_checksum: str | None = None
    note: str | None = None
    # The file the definition was applied from (`webhooks.d/acme/slack.yaml`), as the
    # apply read it; None when no file wrote the entry.
    source: str | None = None


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: str
    serial: int
    record: AuditRecord

    def as_json(self) -> dict[str, Any]:
        r = self.record
        return {
            "id": self.id,
            "at": self.at,
            "serial": self.serial,
            "action": r.action,
            "organization": r.organization,
            "name": r.name,
            "actor": r.actor,
            "git_commit": r.git_commit,
            "plan_checksum": r.plan_checksum,
            "note": r.note,
            "before": r.before,
            "after": r.after,
        }


def audit_rows(audit: Sequence[AuditRecord], serial: int, now: str) -> list[tuple[object, ...]]:
    """Audit records as the audit_log table's rows, in its column order (both backends)."""
    return [
        (
            now,
            serial,
            r.action,
            r.organization,
            r.name,
            json.dumps(r.before, sort_keys=True) if r.before is not None else None,
            json.dumps(r.after, sort_keys=True) if r.after is not None else None,
            r.actor,
            r.git_commit,
            r.plan_checksum,
            r.note,
            r.source,
        )
        for r in audit
    ]


AUDIT_COLUMNS = (
    "id, at, serial, action, organization, name, before, after, actor, git_commit, "
    "plan_checksum, note, source"
)


def history_query(
    placeholder: str,
    organization: str | None,
    name: str | None,
    limit: int | None,
    with_commit: bool,
) -> tuple[str, list[object]]:
    """The audit log's entries, newest first, as one query and its arguments; each
    backend names its own `placeholder` (? or %s)."""
    query = f"SELECT {AUDIT_COLUMNS} FROM audit_log WHERE 1 = 1"
    args: list[object] = []
    if with_commit:
        query += " AND git_commit IS NOT NULL"
    if organization is not None:
        query += f" AND organization = {placeholder}"
        args.append(organization)
    if name is not None:
        query += f" AND name = {placeholder}"
        args.append(name)
    query += " ORDER BY id DESC"
    if limit is not None:
        query += f" LIMIT {placeholder}"
        args.append(limit)
    return query, args


def audit_entry_from_row(row: Sequence[Any]) -> AuditEntry:
    """A row of AUDIT_COLUMNS, from SQLite or PostgreSQL."""
    id_, at, serial, action, org, nm, before, after, actor, commit, checksum, note, source = row
    record = AuditRecord(
        action,
        org,
        nm,
        json.loads(before) if before else None,
        json.loads(after) if after else None,
        actor,
        commit,
        checksum,
        note,
        source,
    )
    return AuditEntry(id_, at, serial, record)


# Every action an audit entry may record (`history --action`).
AUDIT_ACTIONS = (
    "create",
    "update",
    "delete",
    "pause",
    "resume",
    "breaker-open",
    "breaker-close",
    "share",
    "unshare",
)

# What `resume` found: the webhook paused (and now resumed), not paused, or not there.
ResumeOutcome = Literal["resumed", "not paused", "no such webhook"]


def resume_note(reason: str, released: int = 0) -> str:
    note = f"resumed without an apply; it was paused: {reason}"
    if released:
        held = "1 held delivery" if released == 1 else f"{released} held deliveries"
        note += f"; {held} released, due at once"
    return note


class Store(Protocol):
    """The live state of plan and apply. Each backend restates these signatures, as
    a protocol's implementations do: mypy holds each to this one (store/backend.py),
    so the copies cannot drift."""

    url: str  # where the state lives, without credentials

    def state(self) -> StateInfo: ...

    def webhooks(self, organization: str | None = None) -> list[LiveWebhook]: ...

    def lock(self, holder: str, timeout: float) -> AbstractContextManager[None]:
        """Hold the apply lock; wait up to `timeout` seconds, then raise LockTimeout."""
        ...

    def commit(
        self,
        writes: Sequence[Write],
        audit: Sequence[AuditRecord],
        expected_serial: int,
        shared_env: Mapping[str, str] | None = None,
    ) -> int:
        """Apply writes and audit records in one transaction; return the new serial.
        With `shared_env`, the shared list (name -> reason) becomes that, in the same
        transaction.

        Raises StaleState when the serial is no longer `expected_serial`.
        """
        ...

    def shared_env(self) -> dict[str, str]:
        """The shared list as last applied: variable name -> reason."""
        ...

    def env_access(self) -> EnvAccess:
        """The organizations of the live webhooks and the shared list: which
        `${env:}` variables each organization's definitions may read."""
        ...

    def pause(self, organization: str, name: str, reason: str, actor: str) -> None:
        """Pause a webhook from outside apply (the dispatcher, after HTTP 410)."""
        ...

    def resume(self, organization: str, name: str, actor: str) -> ResumeOutcome:
        """Lift a pause without an apply (`webhooks resume`), into the audit log, with
        the webhook's circuit breaker started afresh."""
        ...

    def history(
        self, organization: str | None = None, name: str | None = None, limit: int | None = None
    ) -> Iterator[AuditEntry]: ...

    def last_commit(self, organization: str | None = None) -> AuditEntry | None:
        """The newest audit entry that names a git commit (in `organization`, or in
        any scope): the commit the live state was last applied from."""
        ...

    def migrations(self) -> list[str]:
        """The names of the schema migrations applied, in order."""
        ...

    def close(self) -> None: ...


SHARED_ENV_KEY = "shared_env"  # the meta row holding the shared list, as JSON


def shared_env_text(shared: Mapping[str, str]) -> str:
    return json.dumps(dict(shared), sort_keys=True, ensure_ascii=False)


def shared_env_from_text(text: str | None) -> dict[str, str]:
    if not text:
        return {}
    value = json.loads(text)
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}
