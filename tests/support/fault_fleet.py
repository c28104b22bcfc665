"""Dispatchers on one PostgreSQL state, reached directly or through a fault-injecting
proxy (pg_proxy.py), with the receiver they send to: the fault-injection tests'
setting (test_faults_pg.py), and bench/bench_faults.py's."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from pathlib import Path
from urllib.parse import urlencode, urlsplit, urlunsplit

import httpx

from reconciler.dispatch import failures
from reconciler.store.postgres import PostgresStore
from reconciler.store.queue import EventRecord
from tests.support.helpers_state import bearer, put_specs, spec
from tests.support.pg_proxy import Proxy
from tests.support.receiver import DEADLINE, Receiver, ok
from tests.support.serve_process import Server, eventually, rows


class Fleet:
    """One state, the dispatchers started on it (directly or through a proxy), the
    receiver they send to, and a publisher's token."""

    def __init__(
        self, root: Path, state: str, *, timeout: float, idle: int, intake_deadline: float
    ) -> None:
        """`timeout`: the webhook's; `idle`: the states' idle-in-transaction deadline
        (seconds); `intake_deadline`: serve's."""
        self.root = root
        self.state = state  # the test's own view, direct
        self.idle = idle
        self.intake_deadline = intake_deadline
        self.app = f"reconciler_faults_{uuid.uuid4().hex[:10]}"
        self.receiver = Receiver(default=ok())
        self.store = PostgresStore(state)
        hook = spec("a", url=self.receiver.url("/a"), timeout=f"{timeout:g}s")
        put_specs(self.store, [hook])
        self.headers = bearer(self.store, "acme", role="publisher")
        self.servers: list[Server] = []
        self.proxies: list[Proxy] = []
        self.http = httpx.Client(timeout=DEADLINE)

    def proxy(self) -> Proxy:
        parts = urlsplit(self.state)
        made = Proxy(parts.hostname or "127.0.0.1", parts.port or 5432).start()
        self.proxies.append(made)
        return made

    def url(self, proxy: Proxy | None) -> str:
        """The state URL a dispatcher is given: through `proxy` if any, under this
        test's application_name, with a short idle-in-transaction deadline."""
        parts = urlsplit(self.state)
        netloc = parts.netloc
        if proxy is not None:
            netloc = f"{parts.username}@127.0.0.1:{proxy.port}"
        query = (
            parts.query
            + "&"
            + urlencode(
                {
                    "application_name": self.app,
                    "idle_in_transaction_session_timeout": f"{self.idle}s",
                }
            )
        )
        return urlunsplit(parts._replace(netloc=netloc, query=query))

    def start(self, proxy: Proxy | None = None) -> Server:
        server = Server(
            self.root,
            self.url(proxy),
            len(self.servers),
            ["--intake-deadline", f"{self.intake_deadline:g}", "--concurrency", "20"],
        )
        self.servers.append(server)
        server.wait_ready()
        return server

    def add_events(self, count: int, prefix: str = "evt") -> list[str]:
        """Events stored by the test, not by a dispatcher: any dispatcher claims them."""
        ids = [f"{prefix}-{n:03d}" for n in range(count)]
        records = [
            EventRecord(i, "new_rule_violation", "acme", "r", "", "2026-11-29T21:22:42Z")
            for i in ids
        ]
        self.store.add_events(records, time.time())
        return ids

    def post(self, server: Server, event_id: str) -> tuple[httpx.Response, float]:
        """POST one event; the answer and how long it took."""
        started = time.monotonic()
        response = self.http.post(
            f"{server.url}/v1/events",
            headers=self.headers,
            json={
                "type": "new_rule_violation",
                "organization": "acme",
                "name": "r",
                "id": event_id,
            },
        )
        return response, time.monotonic() - started

    def accept(self, server: Server, event_id: str) -> httpx.Response:
        """POST until accepted, as a client would: the same id again after each 503."""

        def accepted() -> httpx.Response | None:
            response, _ = self.post(server, event_id)
            if response.status_code == 503:
                self.refused(response)
                return None
            assert response.status_code == 202, response.text
            return response

        found = eventually(accepted, f"{event_id} accepted", self)
        assert found is not None
        return found

    def refused(self, response: httpx.Response) -> None:
        """A 503 in the one shape of every refusal: JSON, Retry-After, nothing else."""
        assert response.status_code == 503, response.text
        assert response.headers["content-type"] == "application/json"
        assert response.headers["retry-after"] == str(failures.RETRY_AFTER)
        body = response.json()
        assert set(body) == {"error", "problems"} and body["problems"] == []
        assert body["error"] in (failures.UNAVAILABLE, failures.unknown(self.intake_deadline))

    def ready(self, server: Server) -> bool:
        return self.http.get(f"{server.url}/readyz").status_code == 200

    def statuses(self) -> Counter[str]:
        return Counter(dict(rows(self.state, "SELECT status, count(*) FROM deliveries GROUP BY 1")))

    def all_delivered(self, count: int) -> None:
        eventually(
            lambda: self.statuses() == Counter({"delivered": count}),
            f"all {count} deliveries delivered (now {dict(self.statuses())})",
            self,
        )

    def sent(self) -> Counter[str]:
        """How many times each delivery (webhook-id) reached the receiver."""
        return Counter(r.header("webhook-id") or "" for r in self.receiver.requests())

    def assert_each_sent_once(self, count: int) -> None:
        sent = self.sent()
        twice = {d: n for d, n in sent.items() if n > 1}
        assert not twice, f"sent more than once: {twice}{self}"
        assert len(sent) == count, (len(sent), count)
        ids = {row[0] for row in rows(self.state, "SELECT id FROM deliveries")}
        assert set(sent) == ids

    def __str__(self) -> str:
        return "".join(str(server) for server in self.servers)

    def close(self) -> None:
        for server in self.servers:
            server.stop()
        for proxy in self.proxies:
            proxy.close()
        self.http.close()
        self.store.close()
        self.receiver.close()
