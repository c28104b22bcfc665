"""Integration: `reconciler serve` as a real process, events over real HTTP,
deliveries to a real receiver on loopback; apply, SIGTERM and SIGKILL while it runs.

Every wait has a deadline and fails with what it was waiting for (and the
server's log); every child process is killed and reaped in a fixture.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from reconciler.apply import ApplyOptions, changes_to_writes
from reconciler.dispatch.worker import INTERRUPTED
from reconciler.loader import load_definitions
from reconciler.plan import make_plan
from reconciler.store.sqlite import SqliteStore
from tests.support.helpers_state import bearer_at, definition, run_cli, write_definition
from tests.support.receiver import DEADLINE, Receiver, hang, hold, ok, status
from tests.support.serve_process import ALLOW_LOOPBACK, Server, eventually, rows

ORG = "acme"
EVENT = "new_rule_violation"
BODY = {"event_id": "{{event_id}}", "webhook": "{{webhook}}", "rule": "{{name}}"}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as running:
        yield running
        assert not running.errors, running.errors


class Project:
    """A folder of definitions, a state, and the `serve` processes started on it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.folder = root / "webhooks.d"
        self.folder.mkdir()
        self.db = root / "state.db"
        self.state = f"sqlite:///{self.db}"
        self.servers: list[Server] = []
        self._headers: dict[str, str] | None = None

    @property
    def headers(self) -> dict[str, str]:
        """An admin token for ORG, made once in this project's state."""
        if self._headers is None:
            self._headers = bearer_at(self.state, ORG)
        return self._headers

    def define(self, name: str, organization: str = ORG, **fields: Any) -> Path:
        return write_definition(self.folder, organization, definition(name, **fields))

    def apply_library(self) -> None:
        result = load_definitions(self.folder)
        assert result.ok, [str(p) for p in result.problems]
        store = SqliteStore(self.db)
        try:
            plan = make_plan([d.spec for d in result.definitions], store.webhooks(), store.state())
            writes, audit = changes_to_writes(plan, ApplyOptions(actor="integration-test"))
            store.commit(writes, audit, expected_serial=plan.serial)
        finally:
            store.close()

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_cli([*args, "--state", self.state], self.root)

    def apply_cli(self, *flags: str) -> None:
        result = self.cli("apply", str(self.folder), "--auto-approve", "--actor", "it", *flags)
        assert result.returncode == 0, result.stdout + result.stderr

    def serve(self, *args: str) -> Server:
        server = Server(self.root, self.state, len(self.servers), args)
        self.servers.append(server)  # stopped by the fixture, even if it never gets ready
        server.wait_ready()
        return server

    def rows(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return rows(self.state, sql, args)

    def deliveries(self) -> dict[str, dict[str, Any]]:
        columns = (
            "id, event_id, webhook, status, attempts, lease_owner, lease_expires, "
            "last_status, last_error"
        )
        return {
            row[0]: dict(zip(columns.split(", "), row, strict=True))
            for row in self.rows(f"SELECT {columns} FROM deliveries")
        }


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Project]:
    made = Project(tmp_path)
    try:
        yield made
    finally:
        for server in made.servers:
            server.stop()


def post_event(
    client: httpx.Client, server: Server, event_id: str, name: str = "no-public-s3"
) -> httpx.Response:
    return client.post(
        f"{server.url}/v1/events",
        json={"type": EVENT, "organization": ORG, "name": name, "id": event_id},
    )


def accepted(client: httpx.Client, server: Server, event_id: str, deliveries: int) -> None:
    response = post_event(client, server, event_id)
    assert response.status_code == 202, response.text
    assert response.json() == {
        "event_id": event_id,
        "organization": ORG,
        "deliveries": deliveries,
        "duplicate": False,
    }


def stopped_listening(server: Server) -> bool:
    try:
        httpx.get(f"{server.url}/healthz", timeout=1.0)
    except httpx.TransportError:
        return True
    return False


# -- the API over real HTTP --------------------------------------------------------------


# serve's tuned paths (its own HTTP protocol, the line per attempt without a record)
# and the stock ones `serve --stock` or RECONCILER_SERVE_STOCK=1 chooses.
SERVINGS = {
    "tuned": ((), {}),
    "stock": (("--stock",), {}),
    "stock-from-env": ((), {"RECONCILER_SERVE_STOCK": "1"}),
}
STOCK_LINE = "serving with uvicorn's own HTTP protocol (--stock)"
ATTEMPT_LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO attempt delivery=msg_\S+ "
    r"event=acme/evt-1 webhook=acme/(alpha|beta|gamma) attempt=1 outcome=delivered "
    r"status=200 duration_ms=[\d.]+$",
    re.MULTILINE,
)


@pytest.mark.parametrize("serving", SERVINGS)
def test_serve_fans_out_events_and_answers_its_api(
    project: Project, receiver: Receiver, serving: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("alpha", "beta", "gamma"):
        project.define(name, url=receiver.url(f"/{name}"), body=BODY)
    project.define("surplus", url=receiver.url("/no"), event="reserved_instance_surplus")
    project.apply_library()
    args, env = SERVINGS[serving]
    monkeypatch.delenv("RECONCILER_SERVE_STOCK", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    server = project.serve("--concurrency", "4", *args)

    with httpx.Client(timeout=DEADLINE, headers=project.headers) as client:
        assert client.get(f"{server.url}/healthz").json() == {"status": "ok"}
        paths = client.get(f"{server.url}/openapi.json").json()["paths"]
        assert {
            "/v1/events",
            "/v1/deliveries",
            "/v1/deliveries/{delivery_id}",
            "/v1/deliveries/{delivery_id}/replay",
            "/healthz",
        } <= set(paths)

        accepted(client, server, "evt-1", deliveries=3)
        requests = receiver.wait_for(3)

        def all_delivered() -> list[dict[str, Any]]:
            params = {"org": ORG, "event_id": "evt-1"}
            listed = client.get(f"{server.url}/v1/deliveries", params=params)
            records = listed.json()["deliveries"]
            return records if [r["status"] for r in records] == ["delivered"] * 3 else []

        records = eventually(all_delivered, "three deliveries delivered", server)
        by_webhook = {r["webhook"]: r for r in records}
        assert set(by_webhook) == {"alpha", "beta", "gamma"}
        for request in requests:
            webhook = request.path.lstrip("/")
            assert request.json() == {
                "event_id": "evt-1",
                "webhook": webhook,
                "rule": "no-public-s3",
            }
            assert request.header("webhook-id") == by_webhook[webhook]["id"]

        one = client.get(f"{server.url}/v1/deliveries/{by_webhook['beta']['id']}").json()
        assert one["status"] == "delivered"
        assert [(a["number"], a["outcome"], a["status"]) for a in one["attempts_log"]] == [
            (1, "delivered", 200)
        ]
        assert client.get(f"{server.url}/v1/deliveries/msg_nope").status_code == 404

        again = post_event(client, server, "evt-1")
        assert again.status_code == 202
        assert again.json() == {
            "event_id": "evt-1",
            "organization": ORG,
            "deliveries": 3,
            "duplicate": True,
        }
        assert len(project.rows("SELECT id FROM deliveries WHERE event_id = 'evt-1'")) == 3

        invalid = client.post(f"{server.url}/v1/events", json={"type": "nope", "organization": ORG})
        assert invalid.status_code == 422
        assert {p["field"] for p in invalid.json()["problems"]} >= {"type", "name"}
    assert server.process.poll() is None  # still serving

    def attempt_lines() -> list[str]:
        found = ATTEMPT_LINE.findall(server.log_path.read_text())
        return found if len(found) == 3 else []

    # The same line per attempt whichever path wrote it.
    assert sorted(eventually(attempt_lines, "three attempt lines", server)) == [
        "alpha",
        "beta",
        "gamma",
    ]
    assert (STOCK_LINE in server.log_path.read_text()) == (serving != "tuned")


def test_an_applied_change_reaches_the_running_dispatcher(
    project: Project, receiver: Receiver
) -> None:
    project.define("notify", url=receiver.url("/old"), body=BODY)
    project.apply_cli()
    server = project.serve()

    with httpx.Client(timeout=DEADLINE, headers=project.headers) as client:
        accepted(client, server, "before", deliveries=1)
        (first,) = receiver.wait_for(1, "/old")
        assert first.json()["event_id"] == "before"

        project.define("notify", url=receiver.url("/new"), body={**BODY, "v": 2})
        project.apply_cli()

        accepted(client, server, "after", deliveries=1)
        (second,) = receiver.wait_for(1, "/new")
    assert second.json() == {
        "event_id": "after",
        "webhook": "notify",
        "rule": "no-public-s3",
        "v": 2,
    }
    assert [r.json()["event_id"] for r in receiver.requests("/old")] == ["before"]
    assert server.process.poll() is None  # no restart


def test_deleting_a_webhook_cancels_its_deliveries_waiting_for_a_retry(
    project: Project, receiver: Receiver
) -> None:
    receiver.script("/doomed", status(503, {"Retry-After": "3600"}))
    project.define("doomed", url=receiver.url("/doomed"), body=BODY)
    project.define("kept", url=receiver.url("/kept"), body=BODY)
    project.apply_cli()
    server = project.serve()

    with httpx.Client(timeout=DEADLINE, headers=project.headers) as client:
        accepted(client, server, "evt-1", deliveries=2)

        def waiting() -> list[dict[str, Any]]:
            found = client.get(
                f"{server.url}/v1/deliveries", params={"webhook": "doomed", "status": "pending"}
            ).json()["deliveries"]
            return [d for d in found if d["attempts"] == 1]

        (doomed,) = eventually(waiting, "the 503'd delivery waiting for its retry", server)
        assert doomed["last_status"] == 503
        assert doomed["due_at"] >= time.time() + 3000  # Retry-After: 3600 honoured

        (project.folder / ORG / "doomed.yaml").unlink()
        project.apply_cli("--allow-delete", "--force")

        shown = project.cli("deliveries", "show", doomed["id"])
        assert shown.returncode == 0, shown.stderr
        assert re.search(r"^status\s+cancelled\s*$", shown.stdout, re.MULTILINE), shown.stdout
        assert "cancelled: the webhook was deleted by apply" in shown.stdout

        as_json = json.loads(
            project.cli("deliveries", "show", doomed["id"], "--format", "json").stdout
        )
        assert as_json["status"] == "cancelled"
        assert as_json["due_at"] is None
        assert as_json["last_error"] == "cancelled: the webhook was deleted by apply"

        over_http = client.get(f"{server.url}/v1/deliveries/{doomed['id']}").json()
        assert over_http["status"] == "cancelled"
        assert over_http["last_error"] == "cancelled: the webhook was deleted by apply"
        assert [a["outcome"] for a in over_http["attempts_log"]] == ["retry"]
    assert len(receiver.requests("/doomed")) == 1
    assert len(receiver.requests("/kept")) == 1


def test_a_failed_delivery_replayed_over_http_is_sent_again_with_its_webhook_id(
    project: Project, receiver: Receiver
) -> None:
    receiver.script("/flaky", status(404), ok())
    project.define("flaky", url=receiver.url("/flaky"), body=BODY)
    project.apply_library()
    server = project.serve()

    with httpx.Client(timeout=DEADLINE, headers=project.headers) as client:
        accepted(client, server, "evt-1", deliveries=1)

        def failed() -> list[dict[str, Any]]:
            listed = client.get(f"{server.url}/v1/deliveries", params={"status": "failed"})
            return listed.json()["deliveries"]

        (record,) = eventually(failed, "the 404'd delivery failed", server)
        replay = client.post(f"{server.url}/v1/deliveries/{record['id']}/replay")
        assert replay.status_code == 202, replay.text
        assert replay.json() == {"replayed": [record["id"]]}
        first, second = receiver.wait_for(2)
        eventually(
            lambda: (
                client.get(f"{server.url}/v1/deliveries/{record['id']}").json()["status"]
                == "delivered"
            ),
            "the replayed delivery delivered",
            server,
        )
        missing = client.post(f"{server.url}/v1/deliveries/msg_nope/replay")
        assert missing.status_code == 404
    assert first.header("webhook-id") == second.header("webhook-id") == record["id"]
    assert first.body == second.body


def test_fire_wait_delivers_over_real_http_from_the_command_line(
    project: Project, receiver: Receiver
) -> None:
    receiver.script("/missing", status(404))
    project.define("notify", url=receiver.url("/hook"), body=BODY)
    project.define("broken", url=receiver.url("/missing"), body=BODY)
    project.apply_library()

    result = project.cli(
        "fire",
        EVENT,
        "--org",
        ORG,
        "--name",
        "rule-1",
        "--id",
        "cli-1",
        "--wait",
        "--format",
        "json",
        *ALLOW_LOOPBACK,
    )

    assert result.returncode == 1, result.stdout + result.stderr  # one delivery failed
    out = json.loads(result.stdout)
    assert (out["event_id"], out["deliveries"], out["duplicate"]) == ("cli-1", 2, False)
    statuses = {d["webhook"]: (d["status"], d["last_status"]) for d in out["deliveries_log"]}
    assert statuses == {"notify": ("delivered", 200), "broken": ("failed", 404)}
    (request,) = receiver.requests("/hook")
    assert request.json() == {"event_id": "cli-1", "webhook": "notify", "rule": "rule-1"}
    ids = {d["webhook"]: d["id"] for d in out["deliveries_log"]}
    assert request.header("webhook-id") == ids["notify"]


def test_fire_without_allowing_loopback_reaches_nothing(
    project: Project, receiver: Receiver
) -> None:
    project.define("notify", url=receiver.url("/hook"), body=BODY)
    project.apply_library()

    result = project.cli("fire", EVENT, "--org", ORG, "--name", "r", "--wait", "--format", "json")

    assert result.returncode == 1, result.stdout + result.stderr
    (record,) = json.loads(result.stdout)["deliveries_log"]
    assert record["status"] == "failed"
    assert "refused: 127.0.0.1 is a loopback address" in record["last_error"]
    assert receiver.requests() == []


# -- stopping -------------------------------------------------------------------------------


def test_sigterm_lets_in_flight_requests_finish_and_leaves_the_rest_queued(
    project: Project, receiver: Receiver
) -> None:
    gate = threading.Event()
    receiver.script("/slow", hold(gate))
    project.define("slow", url=receiver.url("/slow"), body=BODY)
    project.apply_library()
    server = project.serve("--concurrency", "2")

    with httpx.Client(timeout=DEADLINE, headers=project.headers) as client:
        for i in range(5):
            accepted(client, server, f"evt-{i}", deliveries=1)
    in_flight = receiver.wait_for(2)  # both slots taken, held by the receiver

    server.signal(signal.SIGTERM)
    # Once it stops listening, it has stopped claiming: then let the requests finish.
    eventually(lambda: stopped_listening(server), "serve closes its port after SIGTERM", server)
    gate.set()
    assert server.wait() == 0, server

    assert len(receiver.requests()) == 2
    eventually(lambda: receiver.answered == 2, "the receiver answered both", server)
    records = project.deliveries()
    finished = {r.header("webhook-id") for r in in_flight}
    assert {d for d, r in records.items() if r["status"] == "delivered"} == finished
    rest = [r for d, r in records.items() if d not in finished]
    assert len(rest) == 3
    for record in rest:
        assert (record["status"], record["attempts"]) == ("pending", 0), record
        assert (record["lease_owner"], record["lease_expires"]) == (None, None), record
    assert "Traceback" not in server.log()


def test_sigterm_past_the_grace_releases_unfinished_deliveries_for_the_next_process(
    project: Project, receiver: Receiver
) -> None:
    gate = threading.Event()
    receiver.script("/slow", hold(gate))
    project.define("slow", url=receiver.url("/slow"), body=BODY)
    project.apply_library()
    server = project.serve("--concurrency", "2", "--grace", "0.5")

    with httpx.Client(timeout=DEADLINE, headers=project.headers) as client:
        for i in range(3):
            accepted(client, server, f"evt-{i}", deliveries=1)
    cut_short = receiver.wait_for(2)

    server.signal(signal.SIGTERM)
    assert server.wait() == 0, server  # the receiver still holds both requests

    records = project.deliveries()
    assert len(records) == 3
    cut_ids = {r.header("webhook-id") for r in cut_short}
    for delivery_id, record in records.items():
        # Due again at once, for any process: the two cut short with their attempt
        # recorded as interrupted, the one never started untouched.
        assert record["status"] == "pending", record
        assert (record["lease_owner"], record["lease_expires"]) == (None, None), record
        cut = delivery_id in cut_ids
        assert record["attempts"] == (1 if cut else 0), record
        assert record["last_error"] == (INTERRUPTED if cut else None), record
    recorded = project.rows("SELECT delivery_id, outcome, error FROM attempts")
    assert sorted(recorded) == sorted((d, "retry", INTERRUPTED) for d in cut_ids)

    receiver.script("/slow", ok())
    gate.set()
    again = project.serve()
    eventually(
        lambda: all(r["status"] == "delivered" for r in project.deliveries().values()),
        "every delivery delivered by the next process",
        again,
    )
    # The two cut short are sent again, under the same webhook-id.
    resent = receiver.requests()[2:]
    assert len(resent) == 3
    assert cut_ids <= {r.header("webhook-id") for r in resent}
    assert {r.header("webhook-id") for r in receiver.requests()} == set(records)


@pytest.mark.parametrize("moment", ["while-delivering", "during-intake"])
def test_sigkill_mid_run_loses_no_accepted_event(
    project: Project, receiver: Receiver, moment: str
) -> None:
    """while-delivering: 200 events are accepted, then the server is killed once the
    receiver has seen 150 of the 400 requests. during-intake: events are posted until
    the server dies, killed once the receiver has seen 100 requests."""
    webhooks = ("a", "b")
    events, kill_after = (200, 150) if moment == "while-delivering" else (5000, 100)
    gate = threading.Event()
    if moment == "during-intake":
        gate.set()
    for name in webhooks:
        receiver.script(f"/{name}", hold(gate, then=hang(0.05)))
        project.define(name, url=receiver.url(f"/{name}"), body=BODY)
    project.apply_library()
    server = project.serve("--concurrency", "20")

    killed = threading.Event()

    def kill_mid_run(request: Any) -> None:
        if request.number + 1 == kill_after:  # numbers are unique: this runs once
            os.kill(server.pid, signal.SIGKILL)
            killed.set()

    receiver.on_request(kill_mid_run)
    accepted_ids = []
    with httpx.Client(timeout=DEADLINE, headers=project.headers) as client:
        for i in range(events):
            event_id = f"evt-{i:04d}"
            try:
                response = post_event(client, server, event_id)
            except httpx.TransportError:
                assert moment == "during-intake" and killed.is_set(), server
                break
            assert response.status_code == 202, response.text
            assert response.json()["deliveries"] == len(webhooks)
            accepted_ids.append(event_id)
        else:
            assert moment == "while-delivering", f"posted {events} events and no kill{server}"
    gate.set()  # while-delivering: every event is in; deliveries go on until the kill
    assert killed.wait(DEADLINE), f"the receiver never saw {kill_after} requests{server}"
    assert server.wait() == -signal.SIGKILL
    if moment == "while-delivering":
        assert kill_after < len(accepted_ids) * len(webhooks)  # some were still to come

    restarted = project.serve("--concurrency", "20")

    def all_delivered() -> bool:
        records = project.deliveries()
        return all(r["status"] == "delivered" for r in records.values())

    eventually(all_delivered, "every delivery delivered after the restart", restarted)

    records = project.deliveries()
    expected = {(r["event_id"], r["webhook"]): d for d, r in records.items()}
    # Every accepted event is there (an event whose 202 was lost to the kill may be too).
    assert {(e, w) for e in accepted_ids for w in webhooks} <= set(expected)
    stored_events = {event for event, _ in expected}
    assert set(expected) == {(e, w) for e in stored_events for w in webhooks}
    sent: dict[tuple[str, str], list[str]] = defaultdict(list)
    for request in receiver.requests():
        body = request.json()
        assert request.path == f"/{body['webhook']}"
        sent[(body["event_id"], body["webhook"])].append(request.header("webhook-id") or "")
    lost = set(expected) - set(sent)
    assert not lost, f"{len(lost)} deliveries never reached the receiver: {sorted(lost)[:5]}"
    for key, ids in sent.items():
        assert set(ids) == {expected[key]}, (key, ids)  # duplicates only under one webhook-id
    duplicated = [key for key, ids in sent.items() if len(ids) > 1]
    # The request that triggered the kill was never answered: it must have been sent again.
    assert duplicated, "the kill should have left at least one request to send again"
    assert restarted.process.poll() is None
    assert "took back" in restarted.log()  # release_dead: the dead process's leases, at once


SETTLED = """
import gc, json, weakref
from reconciler.dispatch.server import settle_garbage_collector

class Node:
    pass

settle_garbage_collector()
freed = []
cycle = Node()
cycle.self = cycle
weakref.finalize(cycle, freed.append, "cycle")
del cycle
gc.collect()
print(json.dumps({"threshold": gc.get_threshold(), "frozen": gc.get_freeze_count(),
                  "freed": freed}))
"""


def test_the_garbage_collector_serve_settles_still_frees_cycles() -> None:
    # Process-wide settings: measured in a process of its own, not in pytest's.
    done = subprocess.run(
        [sys.executable, "-c", SETTLED], capture_output=True, text=True, timeout=60, check=True
    )
    seen = json.loads(done.stdout)
    assert seen["threshold"] == [20_000, 10, 10]
    assert seen["frozen"] > 10_000  # what was loaded is out of the collector's sight
    assert seen["freed"] == ["cycle"]  # a cycle made afterwards is still collected
