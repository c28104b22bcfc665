"""`reconciler demo`: the whole job once, on loopback, leaving nothing behind.

The definitions are copied into a scratch folder with each webhook's URL pointed at
a local receiver standing in for Slack and the other endpoints; the real commands
then run as they would for a user (`apply` into a scratch SQLite state, `tokens
create`, `serve`), one event of each type is posted to the dispatcher's HTTP API,
and what the receiver got is reported, each signature checked. Everything started
is stopped, and the scratch folder removed, before the demo returns, whatever
happened.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from reconciler import scaffold, signing
from reconciler.checks import env_references
from reconciler.errors import ReconcilerError
from reconciler.export import definition_yaml
from reconciler.loader import Definition, load_definitions

DEMO_ORGANIZATION = "acme"
# What each event is about: the rule or event name and its description.
SAMPLES = {
    "new_rule_violation": ("no-public-s3-buckets", "bucket demo-logs is public"),
    "reserved_instance_surplus": (
        "ri-surplus",
        "3 m5.large reservations in us-east-1 are unused",
    ),
    "reserved_instance_deficit": (
        "ri-deficit",
        "4 m5.large instances in us-east-1 run on demand",
    ),
}
START_TIMEOUT = 20.0  # seconds for `serve` to answer /readyz


@dataclass(frozen=True)
class Received:
    """One request as the receiver got it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """An HTTP server on loopback that answers 200 to anything and keeps what it got."""

    requests: list[Received] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _changed: threading.Condition = field(init=False)

    def __post_init__(self) -> None:
        self._changed = threading.Condition(self._lock)

    def record(self, request: Received) -> None:
        with self._changed:
            self.requests.append(request)
            self._changed.notify_all()

    def wait_for(self, count: int, timeout: float) -> list[Received]:
        """The requests once there are `count` of them, or what came within `timeout`."""
        with self._changed:
            self._changed.wait_for(lambda: len(self.requests) >= count, timeout)
            return list(self.requests)


@contextmanager
def receiving() -> Iterator[tuple[Receiver, str]]:
    """A running Receiver and its base URL; stopped on the way out."""
    receiver = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def _any(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {k.lower(): v for k, v in self.headers.items()}
            receiver.record(Received(self.command, self.path, headers, body))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "11")
            self.end_headers()
            self.wfile.write(b'{"ok":true}')

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _any

        def log_message(self, format: str, *args: Any) -> None:
            pass  # the demo reports what arrived itself

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, name="demo-receiver", daemon=True)
    thread.start()
    try:
        yield receiver, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@dataclass(frozen=True)
class DemoWebhook:
    organization: str
    name: str
    event: str
    secret_variable: str | None  # the signing secret's variable, when it signs


def prepare(
    source: Path | None, folder: Path, receiver_url: str
) -> tuple[list[DemoWebhook], dict[str, str]]:
    """Write the definitions into folder/webhooks.d, each URL on the receiver, and
    return the enabled webhooks and the variables their references need."""
    definitions = _definitions(source, folder)
    env: dict[str, str] = {}
    webhooks: list[DemoWebhook] = []
    target = folder / "webhooks.d"
    for definition in definitions:
        spec = definition.spec
        organization, name = spec.key
        data = spec.model_dump(mode="json", exclude_defaults=True)
        data["url"] = f"{receiver_url}/{organization}/{name}"
        data.pop("allow_literal", None)  # the literal credentials it allowed are gone
        secret_variable = None
        for loc, variable, _ in env_references(data):
            if loc[:1] == ("signing_secret",):
                env[variable] = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
                secret_variable = variable
            else:
                env.setdefault(variable, f"demo-{variable.lower().replace('_', '-')}")
        path = target / organization / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(definition_yaml(data), encoding="utf-8")
        if spec.enabled:
            webhooks.append(DemoWebhook(organization, name, spec.event.value, secret_variable))
    return webhooks, env


def _definitions(source: Path | None, folder: Path) -> list[Definition]:
    if source is None:
        # No definitions at hand: the one `reconciler init` writes.
        source = folder / "example"
        (source / DEMO_ORGANIZATION).mkdir(parents=True, exist_ok=True)
        text = scaffold.example_definition(DEMO_ORGANIZATION)
        example = source / DEMO_ORGANIZATION / "slack-new-rule-violation.yaml"
        example.write_text(text, encoding="utf-8")
    result = load_definitions(source)
    if not result.ok:
        raise ReconcilerError(
            f"the definitions in {source} are not valid; `reconciler validate {source}` shows why"
        )
    if not result.definitions:
        raise ReconcilerError(f"no definitions in {source}")
    return result.definitions


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Outcome:
    webhooks: list[DemoWebhook]
    received: list[Received]
    expected: int

    @property
    def complete(self) -> bool:
        return len(self.received) >= self.expected


Say = Callable[[str], None]


def run(source: Path | None, say: Say, *, wait: float = 20.0, keep: Path | None = None) -> Outcome:
    """The demo, start to end; `say` is told each step as it happens."""
    scratch = Path(tempfile.mkdtemp(prefix="reconciler-demo-")) if keep is None else keep
    try:
        with receiving() as (receiver, receiver_url):
            say(f"A receiver standing in for Slack and the other endpoints: {receiver_url}")
            webhooks, env = prepare(source, scratch, receiver_url)
            state = f"sqlite:///{scratch / 'state.db'}"
            cli = _Cli(scratch, {**os.environ, **env, "RECONCILER_STATE": state})
            say(f"Definitions copied to {scratch / 'webhooks.d'}, each URL on the receiver.")
            say(_last_line(cli.run("apply", "--auto-approve", "--actor", "demo", "webhooks.d")))
            token = json.loads(
                cli.run(
                    "tokens",
                    "create",
                    "--role",
                    "publisher",
                    "--all-orgs",
                    "--name",
                    "demo",
                    "--format",
                    "json",
                )
            )["token"]
            port = free_port()
            with cli.serving(port) as base:
                say(f"Dispatcher: reconciler serve on {base}")
                expected = _fire(base, token, webhooks, say)
                received = receiver.wait_for(expected, wait)
            say("Dispatcher stopped.")
        outcome = Outcome(webhooks, received, expected)
        _report(outcome, env, say)
        return outcome
    finally:
        if keep is None:
            shutil.rmtree(scratch, ignore_errors=True)


def _fire(base: str, token: str, webhooks: list[DemoWebhook], say: Say) -> int:
    """One event of each type for each organization that has a webhook for it; the
    number of deliveries the dispatcher queued."""
    pairs = sorted({(w.organization, w.event) for w in webhooks})
    queued = 0
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}) as client:
        for organization, event in pairs:
            answer = client.post(
                "/v1/events",
                json={
                    "type": event,
                    "organization": organization,
                    "name": SAMPLES[event][0],
                    "description": SAMPLES[event][1],
                    "id": f"demo-{event}",
                },
            )
            if answer.status_code >= 300:
                raise ReconcilerError(
                    f"POST /v1/events answered {answer.status_code}: {answer.text}"
                )
            count = int(answer.json()["deliveries"])
            queued += count
            say(f"POST /v1/events {event} for {organization}: {count} queued")
    return queued


def _report(outcome: Outcome, env: dict[str, str], say: Say) -> None:
    by_path = {f"/{w.organization}/{w.name}": w for w in outcome.webhooks}
    say(f"The receiver got {len(outcome.received)} of {outcome.expected} requests:")
    for request in sorted(outcome.received, key=lambda r: r.path):
        path = request.path.split("?", 1)[0]
        webhook = by_path.get(path)
        say(f"  {request.method} {request.path}")
        say(f"    webhook-id: {request.headers.get('webhook-id', '-')}")
        if request.body:
            say(f"    body: {request.body.decode('utf-8', errors='replace')}")
        if webhook is not None and webhook.secret_variable is not None:
            say(f"    signature: {_signature_check(request, env[webhook.secret_variable])}")


def _signature_check(request: Received, secret: str) -> str:
    header = request.headers.get("webhook-signature", "")
    msg_id = request.headers.get("webhook-id", "")
    stamp = request.headers.get("webhook-timestamp", "0")
    try:
        expected = signing.sign(secret, msg_id, int(stamp), request.body)
    except (ValueError, signing.SigningSecretError) as exc:
        return f"cannot check ({exc})"
    presented = header.split()
    if expected in presented:
        return "valid (Standard Webhooks, checked with the webhook's signing secret)"
    return "INVALID"


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


class _Cli:
    """The real command, run as a user would, in the scratch folder."""

    def __init__(self, folder: Path, env: dict[str, str]) -> None:
        self.folder = folder
        self.env = env

    def run(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "reconciler", *args],
            cwd=self.folder,
            env=self.env,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise ReconcilerError(
                f"reconciler {args[0]} failed (exit {done.returncode}): "
                f"{_last_line(done.stderr or done.stdout)}"
            )
        return done.stdout

    @contextmanager
    def serving(self, port: int) -> Iterator[str]:
        """`reconciler serve` on loopback, sending to loopback (the receiver); stopped,
        and waited for, on the way out."""
        log = (self.folder / "serve.log").open("wb")
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "reconciler",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--allow-cidr",
                "127.0.0.1/32",
            ],
            cwd=self.folder,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            try:
                _wait_ready(base, process)
            except ReconcilerError as exc:
                log.flush()
                tail = _last_line((self.folder / "serve.log").read_text(errors="replace"))
                raise ReconcilerError(f"{exc}: {tail}" if tail else str(exc)) from None
            yield base
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            log.close()


def _wait_ready(base: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ReconcilerError(f"reconciler serve exited with {process.returncode}")
        try:
            if httpx.get(f"{base}/readyz", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise ReconcilerError(f"reconciler serve did not become ready within {START_TIMEOUT:g}s")
