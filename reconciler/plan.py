"""The plan: what apply would change, as a value.

Desired definitions (files) are compared with the live state. Canonical JSON is
compared as text first, so only definitions that really differ are diffed field
by field. Safety checks are methods of the plan; how it is shown lives in
plan_report.py.

Every guard is derived from a `LiveView`, the live webhooks as read while the
apply lock is held, never from what a saved plan says about them: a saved plan
only says which changes were reviewed, and apply refuses it when the live state
no longer matches them (`Plan.mismatches`).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import cached_property
from typing import Any, Literal

from pydantic import ValidationError

from reconciler import envaccess
from reconciler.diff import MISSING, FieldChange, field_changes
from reconciler.errors import PlanFileError
from reconciler.model import WebhookSpec, canonical_json
from reconciler.provenance import CommitCheck
from reconciler.secrets import mask_at, mask_spec
from reconciler.store.base import LiveWebhook, StateInfo

FORMAT_VERSION = 1
DEFAULT_DELETE_SHARE = 0.3
DELETE_SHARE_MIN_WEBHOOKS = 4

Action = Literal["create", "update", "delete"]


@dataclass(frozen=True)
class Change:
    action: Action
    organization: str
    name: str
    before: dict[str, Any] | None  # canonical live definition
    after: dict[str, Any] | None  # canonical desired definition
    fields: tuple[FieldChange, ...] = ()
    resumes: str | None = None  # the pause reason an update lifts
    after_json: str | None = field(default=None, compare=False, repr=False)  # canonical text
    # The file the desired definition was read from (webhooks.d/acme/slack.yaml), when
    # the plan was made from files: recorded in the audit log by apply.
    source: str | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.organization, self.name)

    @property
    def protected(self) -> bool:
        return self.action == "delete" and bool((self.before or {}).get("protect"))


@dataclass(frozen=True)
class LiveView:
    """The live webhooks of a plan's scope (one organization, or all of them).

    Apply reads it while it holds the lock; every guard is derived from it.
    """

    organization: str | None
    webhooks: Mapping[tuple[str, str], LiveWebhook]

    @classmethod
    def of(cls, webhooks: Iterable[LiveWebhook], organization: str | None) -> LiveView:
        return cls(
            organization,
            {w.key: w for w in webhooks if organization is None or w.organization == organization},
        )

    def in_scope(self, organization: str) -> bool:
        return self.organization is None or organization == self.organization

    def count(self, organization: str) -> int:
        return self._counts[organization]

    @cached_property
    def _counts(self) -> Counter[str]:
        return Counter(org for org, _ in self.webhooks)

    def protected(self, key: tuple[str, str]) -> bool:
        row = self.webhooks.get(key)
        return row is not None and bool(row.spec_dict().get("protect"))


@dataclass(frozen=True)
class Drift:
    """A live webhook that changed outside apply."""

    organization: str
    name: str
    fields: tuple[FieldChange, ...]  # last applied -> live now
    paused_reason: str | None


@dataclass(frozen=True)
class SharedEnvChange:
    """The shared list (webhooks.d/shared-env.yaml) as live and as wanted: name -> reason."""

    before: dict[str, str]
    after: dict[str, str]

    def lines(self) -> list[tuple[str, str, str]]:
        """(action, name, reason shown) for each name that changes, by name:
        share (+), unshare (-), update (~, the reason)."""
        out = []
        for name in sorted(self.before.keys() | self.after.keys()):
            old, new = self.before.get(name), self.after.get(name)
            if old is None and new is not None:
                out.append(("share", name, new))
            elif new is None and old is not None:
                out.append(("unshare", name, old))
            elif old != new:
                out.append(("update", name, f"{old} -> {new}"))
        return out

    def as_json(self) -> dict[str, Any]:
        return {"before": self.before, "after": self.after}


@dataclass
class Plan:
    lineage: str
    serial: int
    changes: list[Change]
    drift: list[Drift]
    unchanged: int
    organization: str | None = None  # the --org scope, if any
    # What the plan saw, for people and tools reading it; no guard reads these two.
    live_counts: dict[str, int] = field(default_factory=dict)
    desired_empty: bool = False  # no definitions at all were found
    created_at: str = field(
        default_factory=lambda: (
            datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        )
    )
    # The live state the plan was made from; None for a plan read from a file.
    live: LiveView | None = field(default=None, compare=False, repr=False)
    shared_env: SharedEnvChange | None = None  # None: the shared list stays as it is
    # The definitions' commit beside the live state's; shown, never saved with the plan.
    commit_check: CommitCheck | None = field(default=None, compare=False, repr=False)

    @property
    def has_changes(self) -> bool:
        return bool(self.changes) or self.shared_env is not None

    def counts(self) -> Counter[str]:
        return Counter(change.action for change in self.changes)

    def deletes(self) -> list[Change]:
        return [c for c in self.changes if c.action == "delete"]

    def checksum(self) -> str:
        """The checksum of the saved form: every field of the file but the checksum.

        It catches a plan file that was edited, cut short or mixed up; it is no
        seal against a forger, who can compute it too. Apply's safety comes from
        deriving every guard from the live state (`refusals`, `mismatches`).
        """
        return document_checksum(self.as_json(full=True, checksum=False))

    # -- safety checks --------------------------------------------------------

    def refusals(
        self,
        *,
        allow_delete: bool,
        force: bool,
        delete_share: float = DEFAULT_DELETE_SHARE,
        live: LiveView | None = None,
    ) -> list[str]:
        """Why apply must not go ahead with the flags given; empty when it may.

        Derived from `live` (by default the live state the plan was made from),
        never from the plan's own account of it: what is protected, how many
        webhooks an organization has, whether any definition is left.
        """
        view = live if live is not None else self.live
        if view is None:
            raise ValueError("a plan read from a file has no live state: pass the one under lock")
        reasons = []
        deletes = self.deletes()
        protected = [c for c in deletes if view.protected(c.key)]
        if protected:
            names = ", ".join(f"{c.organization}/{c.name}" for c in protected)
            reasons.append(
                f"{names} {'is' if len(protected) == 1 else 'are'} protected and never "
                "deleted: restore the definition, apply it with protect: false, then delete it"
            )
        if deletes and not allow_delete:
            reasons.append(
                f"the plan deletes {len(deletes)} webhook{'s' if len(deletes) != 1 else ''}, "
                "which cannot be recovered: re-run with --allow-delete (on a terminal, "
                "typing 'delete' when asked also allows it)"
            )
        if deletes and not force:
            reasons.extend(self._mass_delete_reasons(view, delete_share))
        return reasons

    def _mass_delete_reasons(self, live: LiveView, delete_share: float) -> list[str]:
        deletes = self.deletes()
        creates = Counter(c.organization for c in self.changes if c.action == "create")
        # No definitions in scope is the one way a plan creates nothing and deletes
        # every live webhook in scope.
        if not creates and live.webhooks.keys() <= {c.key for c in deletes}:
            return [
                "no definitions were found, so the plan deletes every live webhook in scope: "
                "re-run with --force if that is intended"
            ]
        reasons = []
        per_org = Counter(c.organization for c in deletes)
        for org, count in sorted(per_org.items()):
            live_count = live.count(org)
            if count >= live_count and not creates[org]:
                reasons.append(
                    f"the plan deletes every webhook of organization '{org}' ({count}): "
                    "re-run with --force if that is intended"
                )
            elif live_count >= DELETE_SHARE_MIN_WEBHOOKS and count / live_count > delete_share:
                reasons.append(
                    f"the plan deletes {count} of {live_count} webhooks of organization "
                    f"'{org}', more than {delete_share:.0%}: re-run with --force if that is "
                    "intended"
                )
        return reasons

    def mismatches(self, live: LiveView) -> list[str]:
        """The changes whose `before` is no longer the live definition, one phrase each.

        A saved plan says which changes were reviewed; when the live state no longer
        matches them, it is not the plan that was reviewed any more.
        """
        found = []
        for change in self.changes:
            who = f"{change.organization}/{change.name}"
            if not live.in_scope(change.organization):
                found.append(f"{who} is outside the plan's organization {live.organization}")
                continue
            row = live.webhooks.get(change.key)
            if row is None:
                if change.before is not None:
                    found.append(f"{who} was deleted")
            elif change.before is None:
                found.append(f"{who} was created")
            else:
                now = row.spec_dict()
                if canonical_json(now) != canonical_json(change.before):
                    paths = ", ".join(f.dotted for f in field_changes(change.before, now))
                    found.append(f"{who} was edited ({paths or 'its definition'})")
        return found

    # -- saved plans ------------------------------------------------------------

    def as_json(self, *, full: bool = False, checksum: bool = True) -> dict[str, Any]:
        """The documented JSON shape (format_version 1); masked unless `full`.

        The checksum is always the saved (full) form's, so the one a masked report
        shows names the file `plan --out` writes.
        """
        show = (lambda spec: spec) if full else mask_spec
        counts = self.counts()
        data: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "full": full,
            "lineage": self.lineage,
            "serial": self.serial,
            "created_at": self.created_at,
            "organization": self.organization,
            "checksum": None,
            "summary": {
                "create": counts["create"],
                "update": counts["update"],
                "delete": counts["delete"],
                "unchanged": self.unchanged,
                "drift": len(self.drift),
            },
            "changes": [_change_json(c, show, full) for c in self.changes],
            "drift": [
                {
                    "organization": d.organization,
                    "name": d.name,
                    "paused_reason": d.paused_reason,
                    "fields": [_field_json(f, full) for f in d.fields],
                }
                for d in self.drift
            ],
            "live_counts": self.live_counts,
            "desired_empty": self.desired_empty,
            "shared_env": None if self.shared_env is None else self.shared_env.as_json(),
        }
        if checksum:
            data["checksum"] = self.checksum()
        else:
            del data["checksum"]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Plan:
        if data.get("format_version") != FORMAT_VERSION:
            raise PlanFileError(
                f"saved plan has format_version {data.get('format_version')!r}; "
                f"this reconciler reads {FORMAT_VERSION}"
            )
        if not data.get("full"):
            raise PlanFileError("this plan was not saved with --out, so it cannot be applied")
        try:
            changes = [_change_from_json(c) for c in data["changes"]]
            plan = cls(
                lineage=data["lineage"],
                serial=data["serial"],
                changes=changes,
                drift=[
                    Drift(
                        d["organization"],
                        d["name"],
                        tuple(_field_from_json(f) for f in d["fields"]),
                        d.get("paused_reason"),
                    )
                    for d in data.get("drift", [])
                ],
                unchanged=data["summary"]["unchanged"],
                organization=data.get("organization"),
                live_counts=data.get("live_counts", {}),
                desired_empty=data.get("desired_empty", False),
                created_at=data["created_at"],
                shared_env=_shared_env_from_json(data.get("shared_env")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise PlanFileError(f"saved plan is incomplete: {exc}") from None
        strays = [c for c in changes if plan.organization not in (None, c.organization)]
        if strays:
            raise PlanFileError(
                f"saved plan changes {strays[0].organization}/{strays[0].name}, outside its "
                f"organization {plan.organization}: it was edited"
            )
        if document_checksum(data) != data.get("checksum"):
            raise PlanFileError("saved plan does not match its checksum: it was edited")
        # The checksum can be recomputed by anyone: the fields must also agree with
        # each other (summary, field changes, protected marks) as plan --out wrote them.
        if plan.checksum() != data["checksum"]:
            raise PlanFileError(
                "saved plan's fields do not agree with each other, though its checksum "
                "was recomputed: it was edited"
            )
        return plan


def document_checksum(document: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of every field of a saved plan but `checksum`."""
    body = {key: value for key, value in document.items() if key != "checksum"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


_SIDES: dict[str, tuple[bool, bool]] = {  # action -> (has before, has after)
    "create": (False, True),
    "update": (True, True),
    "delete": (True, False),
}


def _shared_env_from_json(data: Any) -> SharedEnvChange | None:
    if data is None:
        return None
    before, after = data["before"], data["after"]
    for names in (before, after):
        if not isinstance(names, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in names.items()
        ):
            raise ValueError("shared_env: expected name -> reason")
    for name in after:
        # A saved plan is applied as written: what it shares must be shareable.
        if envaccess.shared_name_problem(name, ()) is not None:
            raise PlanFileError(f"saved plan shares {name}, which can never be shared")
    return SharedEnvChange(before, after)


def _change_from_json(data: dict[str, Any]) -> Change:
    before, after = data.get("before"), data.get("after")
    if data["action"] not in _SIDES:
        raise ValueError(f"unknown action {data['action']!r}")
    if _SIDES[data["action"]] != (before is not None, after is not None):
        raise PlanFileError(
            f"saved plan's {data['action']} of {data['name']} has "
            f"{'no' if before is None else 'a'} before and {'no' if after is None else 'an'} "
            "after: it was edited"
        )
    if before is not None and not isinstance(before, dict):
        raise ValueError(f"the before of {data['name']} is not an object")
    if after is not None:
        # A saved plan is applied as written: it must hold valid definitions.
        try:
            spec = WebhookSpec.model_validate(after)
        except ValidationError as exc:
            raise PlanFileError(
                f"saved plan holds an invalid definition for {data['name']}: "
                f"{exc.errors()[0]['msg']}"
            ) from None
        if spec.canonical() != after or spec.key != (data["organization"], data["name"]):
            raise PlanFileError(f"saved plan's definition of {data['name']} is not canonical")
    fields: tuple[FieldChange, ...] = ()
    if data["action"] == "update" and before is not None and after is not None:
        fields = tuple(field_changes(before, after))
    return Change(
        data["action"],
        data["organization"],
        data["name"],
        before,
        after,
        fields,
        resumes=data.get("resumes"),
        source=data.get("source") if isinstance(data.get("source"), str) else None,
    )


def _field_from_json(data: dict[str, Any]) -> FieldChange:
    return FieldChange(
        tuple(data["path_parts"]),
        MISSING if data["added"] else data["old"],
        MISSING if data["removed"] else data["new"],
    )


def _field_json(change: FieldChange, full: bool) -> dict[str, Any]:
    def shown(value: Any) -> Any:
        if value is MISSING:
            return None
        return value if full else mask_at(change.path, value)

    return {
        "path": change.dotted,
        "path_parts": list(change.path),
        "old": shown(change.old),
        "new": shown(change.new),
        "added": change.old is MISSING,
        "removed": change.new is MISSING,
    }


def _change_json(change: Change, show: Any, full: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "action": change.action,
        "organization": change.organization,
        "name": change.name,
    }
    if change.before is not None:
        out["before"] = show(change.before)
    if change.after is not None:
        out["after"] = show(change.after)
    if change.action == "update":
        out["fields"] = [_field_json(f, full) for f in change.fields]
        out["resumes"] = change.resumes
    if change.action == "delete":
        out["unrecoverable"] = True
        out["protected"] = change.protected
    if full and change.source is not None:
        out["source"] = change.source
    return out


def with_sources(plan: Plan, sources: Mapping[tuple[str, str], str]) -> Plan:
    """`plan` with each create and update naming the file its definition was read
    from (`sources`: (organization, name) -> path), which apply records in the
    audit log."""
    plan.changes = [
        replace(c, source=sources.get(c.key)) if c.after is not None else c for c in plan.changes
    ]
    return plan


def make_plan(
    desired: Iterable[WebhookSpec],
    live: Iterable[LiveWebhook],
    state: StateInfo,
    *,
    organization: str | None = None,
    shared_env: Mapping[str, str] | None = None,
    live_shared_env: Mapping[str, str] | None = None,
) -> Plan:
    """The plan from `desired` to `live`. With `shared_env` (the shared list wanted)
    and no `organization` scope, the shared list is planned too: a plan of one
    organization leaves the platform's list as it is."""
    wanted: dict[tuple[str, str], tuple[str, dict[str, Any]]] = {}
    for spec in desired:
        if organization is None or spec.key[0] == organization:
            canonical = spec.canonical()
            wanted[spec.key] = (canonical_json(canonical), canonical)
    current = {w.key: w for w in live if organization is None or w.organization == organization}

    changes: list[Change] = []
    drift: list[Drift] = []
    unchanged = 0
    for key in sorted(wanted.keys() | current.keys()):
        desired_pair, row = wanted.get(key), current.get(key)
        if row is not None and row.drifted:
            drift.append(_drift(row))
        if desired_pair is None:
            assert row is not None
            changes.append(Change("delete", *key, row.spec_dict(), None))
            continue
        text, after = desired_pair
        if row is None:
            changes.append(Change("create", *key, None, after, after_json=text))
        elif text == row.spec and not row.drifted:
            unchanged += 1
        else:
            before = row.spec_dict()
            changes.append(
                Change(
                    "update",
                    *key,
                    before,
                    after,
                    tuple(field_changes(before, after)),
                    resumes=row.paused_reason,
                    after_json=text,
                )
            )
    shared_change = None
    if shared_env is not None and organization is None:
        before, after = dict(live_shared_env or {}), dict(shared_env)
        if before != after:
            shared_change = SharedEnvChange(before, after)
    return Plan(
        lineage=state.lineage,
        serial=state.serial,
        changes=changes,
        drift=drift,
        unchanged=unchanged,
        organization=organization,
        live_counts=dict(Counter(w.organization for w in current.values())),
        desired_empty=not wanted,
        live=LiveView(organization, current),
        shared_env=shared_change,
    )


def _drift(row: LiveWebhook) -> Drift:
    fields: tuple[FieldChange, ...] = ()
    if row.spec != row.applied:
        fields = tuple(field_changes(json.loads(row.applied), row.spec_dict()))
    return Drift(row.organization, row.name, fields, row.paused_reason)
