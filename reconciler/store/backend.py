"""What `open_store` returns: one backend that keeps all of the live state.

A backend is the union of five interfaces, each named after its callers: `Store`
(the applied webhooks, the audit log and the apply lock: plan, apply, history),
`QueueStore` (events, deliveries and attempts: the dispatcher), `TokenStore` (the
API's tokens) and `RetentionStore` (retention's batches and the state's size) and `ConsoleStore`
(the web console's sessions and page queries).
SqliteStore and PostgresStore have all four; callers that need one part take that
part, and whatever opens a state by its URL gets this.
"""

from __future__ import annotations

from typing import Protocol

from reconciler.store.base import Store
from reconciler.store.console import ConsoleStore
from reconciler.store.queue import QueueStore
from reconciler.store.retention import RetentionStore
from reconciler.store.tokens import TokenStore


class Backend(Store, QueueStore, TokenStore, RetentionStore, ConsoleStore, Protocol):
    """The live state of one installation: webhooks, queue, tokens, retention and the
    console's sessions."""
