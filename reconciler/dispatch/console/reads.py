"""What the console's pages read, each a function of the store run on the
dispatcher's database thread (Dispatcher.read), and shaped for the templates.

Everything shown of a definition goes through the masking the plan, history and
render use (reconciler/secrets.py, history_report.shown, preview.preview): a
literal credential is `****`, a `${env:NAME}` reference is shown as written.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from reconciler.diff import MISSING, field_changes
from reconciler.export import definition_yaml
from reconciler.health import breaker_states
from reconciler.history_report import shown
from reconciler.secrets import MASK, mask_at, mask_spec, mask_text
from reconciler.store.backend import Backend
from reconciler.store.base import AuditEntry, LiveWebhook
from reconciler.store.console import (
    DeliveryFilter,
    DeliveryPage,
    HistoryFilter,
    WebhookFilter,
    WebhookOutcomes,
)
from reconciler.store.queue import AttemptRecord, DeliveryRecord

DAY = 86_400.0
# What a receiver may echo back (an echo service returns the request it got): the
# value after an auth scheme or a credential's name, whatever it looks like.
_CREDENTIAL_AFTER = re.compile(
    r"(?i)\b(authorization|bearer|basic|token|api[-_]?key|secret|password)"
    r"(\b[\"']?\s*[:=]?\s*[\"']?\s*)(?!(?:bearer|basic|digest|token)\b)"
    r"([^\s\"',;<>&=:*][^\s\"',;<>&]{3,})"
)


def shown_text(text: str | None) -> str:
    """Free text from outside (an attempt's error, a response excerpt) as a page
    shows it: masked as the log masks it, and every value that follows an auth
    scheme or a credential's name masked too."""
    if not text:
        return ""
    return _CREDENTIAL_AFTER.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}", mask_text(text))


@dataclass(frozen=True)
class WebhookRow:
    organization: str
    name: str
    event: str
    method: str
    url: str  # masked
    state: str  # enabled | disabled | paused
    paused_reason: str | None
    breaker: str
    outcomes: WebhookOutcomes


def state_of(live: LiveWebhook) -> str:
    if live.paused_reason is not None:
        return "paused"
    return "enabled" if live.spec_dict().get("enabled", True) is not False else "disabled"


def webhook_rows(store: Backend, query: WebhookFilter, now: float) -> list[WebhookRow]:
    """One page of webhooks, with the stats of those on it only."""
    page = store.webhook_page(query)
    keys = [w.key for w in page]
    breakers = breaker_states(store, keys)
    outcomes = store.webhook_outcomes(keys, now - DAY)
    rows = []
    for live in page:
        spec = mask_spec(live.spec_dict())
        rows.append(
            WebhookRow(
                live.organization,
                live.name,
                str(spec.get("event", "")),
                str(spec.get("method", "")),
                str(spec.get("url", "")),
                state_of(live),
                live.paused_reason,
                breakers[live.key],
                outcomes[live.key],
            )
        )
    return rows


@dataclass(frozen=True)
class Change:
    field: str
    before: str  # JSON of the masked value, or "" when the field was not set
    after: str


@dataclass(frozen=True)
class HistoryRow:
    entry: AuditEntry  # masked (history_report.shown)
    changes: list[Change] = field(default_factory=list)


def _json(value: Any) -> str:
    return "" if value is MISSING else json.dumps(value, ensure_ascii=False)


def history_row(entry: AuditEntry) -> HistoryRow:
    """The entry, masked, with its field-level changes: before -> after, each value
    masked as the plan masks it; a create or a delete field by field (top level)."""
    entry = shown(entry)
    r = entry.record
    if r.action not in ("create", "update", "delete") or not (r.before or r.after):
        return HistoryRow(entry, [])
    if r.before is None or r.after is None:  # created or deleted: every field it had
        fields = (r.after if r.before is None else r.before) or {}
        changes = [
            Change(
                key,
                "" if r.before is None else _json(mask_at((key,), value)),
                "" if r.after is None else _json(mask_at((key,), value)),
            )
            for key, value in fields.items()
        ]
        return HistoryRow(entry, changes)
    return HistoryRow(
        entry,
        [
            Change(
                c.dotted,
                "" if c.old is MISSING else _json(mask_at(c.path, c.old)),
                "" if c.new is MISSING else _json(mask_at(c.path, c.new)),
            )
            for c in field_changes(r.before, r.after)
        ],
    )


def history_rows(store: Backend, query: HistoryFilter) -> list[HistoryRow]:
    return [history_row(e) for e in store.history_page(query)]


@dataclass(frozen=True)
class WebhookDetail:
    live: LiveWebhook
    yaml: str  # masked
    path: str
    path_recorded: bool  # the file an apply read it from; else the conventional path
    commit: str | None
    state: str
    breaker: str
    deliveries: list[DeliveryRecord]
    history: list[HistoryRow]


def definition_path(organization: str, name: str) -> str:
    return f"webhooks.d/{organization}/{name}.yaml"


def webhook_detail(store: Backend, organization: str, name: str) -> WebhookDetail | None:
    live = next((w for w in store.webhooks(organization) if w.name == name), None)
    if live is None:
        return None
    spec = mask_spec(live.spec_dict())
    entries = list(store.history(organization, name, limit=50))
    commit = next((e.record.git_commit for e in entries if e.record.git_commit), None)
    # The newest entry an apply wrote from a file; fifty entries back is far enough,
    # and past them the conventional path is shown.
    source = next((e.record.source for e in entries if e.record.source), None)
    deliveries = store.delivery_page(
        DeliveryFilter(organizations=[organization], webhook=name, limit=20)
    ).records
    return WebhookDetail(
        live,
        definition_yaml(spec),
        source or definition_path(organization, name),
        source is not None,
        commit,
        state_of(live),
        breaker_states(store, [live.key])[live.key],
        deliveries,
        [history_row(e) for e in entries],
    )


def delivery_rows(store: Backend, query: DeliveryFilter) -> DeliveryPage:
    return store.delivery_page(query)


def delivery(store: Backend, delivery_id: str) -> tuple[DeliveryRecord, list[AttemptRecord]] | None:
    return store.delivery(delivery_id)


def organizations_of(store: Backend, visible: Sequence[str] | None) -> list[str]:
    """The organizations a filter may offer: those of the live webhooks the token sees."""
    known = sorted(store.env_access().organizations)
    return known if visible is None else [o for o in known if o in visible]
