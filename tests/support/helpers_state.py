"""Helpers for the live state, plan, apply, history and export tests.

Definitions are written as real YAML files and loaded by the real loader, so a
test sees what a user would. Subprocess helpers run `python -m reconciler`
with an environment that names no CI actor, so the actor is always the one a
test chose.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from reconciler.loader import load_definitions
from reconciler.model import WebhookSpec, canonical_json
from reconciler.plan import Plan, make_plan
from reconciler.provenance import CI_ACTOR_VARIABLES
from reconciler.store.base import AuditEntry, LiveWebhook, StateInfo, Store, Write
from reconciler.store.tokens import TokenStore
from reconciler.tokens import create_token

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "webhooks.d"
RECONCILER = [sys.executable, "-m", "reconciler"]
SUBPROCESS_TIMEOUT = 60


# -- definitions ------------------------------------------------------------------


def definition(name: str, **fields: Any) -> dict[str, Any]:
    """A valid POST definition; keyword arguments override or add fields."""
    data: dict[str, Any] = {
        "name": name,
        "event": "new_rule_violation",
        "method": "POST",
        "url": f"https://hooks.example.com/{name}",
        "headers": {"Content-Type": "application/json"},
        "body": {"text": "The rule {{name}} was violated at: {{time}}."},
    }
    data.update(fields)
    return {key: value for key, value in data.items() if value is not None}


def write_definition(folder: Path, organization: str | None, data: dict[str, Any] | str) -> Path:
    """Write one definition file at folder/<organization>/<name>.yaml (or folder/<name>.yaml)."""
    if isinstance(data, str):
        name = yaml.safe_load(data)["name"]
        text = data
    else:
        name = data["name"]
        text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    target = (folder / organization if organization else folder) / f"{name}.yaml"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text, encoding="utf-8")
    return target


def spec(name: str, organization: str = "acme", **fields: Any) -> WebhookSpec:
    return WebhookSpec.model_validate({**definition(name, **fields), "organization": organization})


def load_specs(folder: Path) -> list[WebhookSpec]:
    result = load_definitions(folder)
    assert result.ok, [str(p) for p in result.problems]
    return [d.spec for d in result.definitions]


def plan_folder(store: Store, folder: Path, organization: str | None = None) -> Plan:
    return make_plan(
        load_specs(folder),
        store.webhooks(organization),
        store.state(),
        organization=organization,
    )


def put_specs(store: Store, specs: Iterable[WebhookSpec]) -> int:
    """Make these definitions live directly, without apply (and without audit records)."""
    writes = [Write("put", *s.key, s.canonical_json()) for s in specs]
    return store.commit(writes, [], expected_serial=store.state().serial)


# -- API tokens ---------------------------------------------------------------------


def bearer(
    store: Any,
    *organizations: str,
    role: str = "admin",
    all_organizations: bool = False,
    now: float | None = None,
    expires_in: float | None = None,
) -> dict[str, str]:
    """Make an API token in `store` and return the header that sends it."""
    tokens: TokenStore = store
    _, secret = create_token(
        tokens,
        role=role,
        organizations=organizations,
        all_organizations=all_organizations,
        name="tests",
        expires_in=expires_in,
        now=time.time() if now is None else now,
    )
    return {"Authorization": f"Bearer {secret}"}


def make_state(url: str) -> str:
    """Make a new, empty state at url, as `reconciler migrate` does, and return url:
    every command but apply and migrate refuses a state that is not there."""
    from reconciler.store import open_store

    open_store(url, create=True).close()
    return url


def bearer_at(url: str, *organizations: str, role: str = "admin") -> dict[str, str]:
    """bearer() for the state at `url`, opened and closed around it."""
    from reconciler.store import open_store

    store = open_store(url)
    try:
        return bearer(store, *organizations, role=role)
    finally:
        store.close()


# -- the live state ---------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """Everything apply may change: compared whole to show that nothing changed."""

    state: StateInfo
    webhooks: list[LiveWebhook]
    history: list[AuditEntry]


def snapshot(store: Store) -> Snapshot:
    return Snapshot(store.state(), store.webhooks(), list(store.history()))


def live_specs(store: Store, organization: str | None = None) -> dict[tuple[str, str], Any]:
    return {w.key: w.spec_dict() for w in store.webhooks(organization)}


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def set_live_spec(db: Path, organization: str, name: str, spec_value: dict[str, Any]) -> None:
    """Change a live webhook behind apply's back: drift, as a hand-edit would make it."""
    with sqlite3.connect(db) as conn:
        changed = conn.execute(
            "UPDATE webhooks SET spec = ? WHERE organization = ? AND name = ?",
            (canonical_json(spec_value), organization, name),
        ).rowcount
    conn.close()
    assert changed == 1


def audit_rows(db: Path) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT * FROM audit_log ORDER BY id").fetchall()
    finally:
        conn.close()


# -- time ---------------------------------------------------------------------------


class FakeClock:
    """A monotonic clock that only moves when `sleep` is called."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


# -- apply --------------------------------------------------------------------------


@dataclass
class FakeApprover:
    """An Approver whose answers are set by the test; it records what it was asked."""

    interactive: bool = False
    approve_answer: bool = True
    delete_answer: bool = True
    asked: list[str] = field(default_factory=list)

    def confirm_deletes(self, plan: Plan) -> bool:
        self.asked.append("confirm_deletes")
        return self.delete_answer

    def approve(self, plan: Plan) -> bool:
        self.asked.append("approve")
        return self.approve_answer


# -- processes ----------------------------------------------------------------------


def cli_env(**extra: str) -> dict[str, str]:
    """The environment for a CLI subprocess: no CI actor, no state, no colour."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in CI_ACTOR_VARIABLES and k not in ("RECONCILER_STATE", "NO_COLOR")
    }
    env.update(extra)
    return env


def run_cli(
    args: Sequence[str],
    cwd: Path,
    env: Mapping[str, str] | None = None,
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `python -m reconciler ARGS` in a real process, stdin not a terminal."""
    result = subprocess.run(
        [*RECONCILER, *args],
        cwd=cwd,
        env=dict(env) if env is not None else cli_env(),
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        check=False,
    )
    assert_no_traceback(result.stdout + result.stderr)
    return result


def assert_no_traceback(output: str) -> None:
    assert "Traceback" not in output, output
    assert 'File "' not in output, output


def json_out(result: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(result.stdout)
