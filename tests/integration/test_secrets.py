"""Secrets given through ${env:...} never show: not in plans, history, exports,
delivery records, logs, metrics or error messages, on any path a user can take."""

from __future__ import annotations

import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 60

SLACK_PATH = "/services/T0SECRETT/B0SECRETB/xoxSecretPathValue"
TOKEN = "tok_SuperSecretToken42"
SIGNING_KEY = "c2lnbmluZy1rZXktdGhhdC1tdXN0LW5vdC1sZWFr"  # base64 of a 30-byte key


class _Receiver(http.server.BaseHTTPRequestHandler):
    seen: ClassVar[list[dict[str, str]]] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        type(self).seen.append({k.lower(): v for k, v in self.headers.items()})
        self.send_response(500)  # so the delivery is retried, and its error recorded
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"no")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _secrets(port: int) -> dict[str, str]:
    return {
        "ACME_SLACK_URL": f"http://127.0.0.1:{port}{SLACK_PATH}",
        "ACME_TOKEN": TOKEN,
        "ACME_SIGNING": "whsec_" + SIGNING_KEY,
        # a second webhook whose endpoint refuses connections: its error is recorded
        "ACME_DOWN_URL": f"http://127.0.0.1:{_free_port()}{SLACK_PATH}/down",
    }


SECRET_PARTS = ("T0SECRETT", "B0SECRETB", "xoxSecretPathValue", TOKEN, SIGNING_KEY)


def _assert_clean(where: str, text: str) -> None:
    for part in SECRET_PARTS:
        assert part not in text, f"{part!r} leaked into {where}"


def _project(tmp_path: Path) -> Path:
    folder = tmp_path / "webhooks.d" / "acme"
    folder.mkdir(parents=True)
    (folder / "slack.yaml").write_text(
        "name: slack\nevent: new_rule_violation\nmethod: POST\nurl: ${env:ACME_SLACK_URL}\n"
        "headers:\n  Authorization: Bearer ${env:ACME_TOKEN}\n"
        "body: {text: 'rule {{name}}'}\nsigning_secret: ${env:ACME_SIGNING}\n"
        "retry: {schedule: [1h]}\n"
    )
    (folder / "down.yaml").write_text(
        "name: down\nevent: new_rule_violation\nmethod: POST\nurl: ${env:ACME_DOWN_URL}\n"
        "body: {text: 'rule {{name}}'}\nretry: {schedule: [1h]}\n"
    )
    return tmp_path


def _run(project: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "reconciler", *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result


def test_no_secret_shows_anywhere(tmp_path: Path, receiver: int) -> None:
    project = _project(tmp_path)
    env = {**os.environ, **_secrets(receiver), "NO_COLOR": "1"}
    env.pop("RECONCILER_STATE", None)
    outputs: dict[str, str] = {}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        result = _run(project, env, *args)
        outputs[" ".join(args)] = result.stdout + result.stderr
        return result

    assert run("validate", "--check-env").returncode == 0
    assert run("migrate").returncode == 0  # plan reads a state that is there
    for fmt in ("text", "json", "markdown"):
        run("plan", "--format", fmt)
    assert run("plan", "--out", "plan.json").returncode == 0
    outputs["plan.json"] = (project / "plan.json").read_text()
    assert run("apply", "--auto-approve", "--actor", "alice").returncode == 0
    run("history")
    run("history", "--format", "json")
    assert run("export", "exported.d").returncode == 0
    for path in (project / "exported.d").rglob("*.yaml"):
        outputs[str(path)] = path.read_text()
    fired = run(
        "fire", "new_rule_violation", "--org", "acme", "--name", "r1", "--wait",
        "--allow-private-networks", "--format", "json",
    )  # fmt: skip
    deliveries = json.loads(fired.stdout)["deliveries_log"]
    assert {d["webhook"]: d["status"] for d in deliveries} == {
        "slack": "pending",  # the receiver said 500: retried later
        "down": "pending",  # connection refused: retried later
    }
    assert (
        "connection failed" in next(d for d in deliveries if d["webhook"] == "down")["last_error"]
    )
    for delivery in deliveries:
        run("deliveries", "show", delivery["id"])
        run("deliveries", "show", delivery["id"], "--format", "json")
    run("deliveries", "list", "--format", "json")

    # The receiver did get the real thing: the secrets were resolved at send time.
    assert _Receiver.seen and _Receiver.seen[-1]["authorization"] == f"Bearer {TOKEN}"
    for where, text in outputs.items():
        _assert_clean(where, text)
    _assert_clean("the state database", (project / ".reconciler" / "state.db").read_bytes().decode(
        "utf-8", errors="replace"
    ))  # fmt: skip


def test_serve_logs_metrics_and_api_never_show_a_secret(tmp_path: Path, receiver: int) -> None:
    project = _project(tmp_path)
    env = {**os.environ, **_secrets(receiver), "NO_COLOR": "1"}
    env.pop("RECONCILER_STATE", None)
    assert _run(project, env, "apply", "--auto-approve").returncode == 0
    made = _run(project, env, "tokens", "create", "--role", "admin", "--org", "acme")
    assert made.returncode == 0, made.stderr
    api_token = made.stdout.strip()
    server = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "serve", "--port", "0", "--allow-private-networks"],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        assert line.startswith("serving on http://"), line
        base = line.split()[2]
        headers = {"Authorization": f"Bearer {api_token}"}
        with httpx.Client(base_url=base, timeout=TIMEOUT, headers=headers) as http:
            posted = http.post(
                "/v1/events",
                json={"type": "new_rule_violation", "organization": "acme", "name": "r1"},
            )
            assert posted.status_code == 202
            event_id = posted.json()["event_id"]
            deadline_polls = 0
            while True:  # until both deliveries were attempted once
                params = {"org": "acme", "event_id": event_id}
                listed = http.get("/v1/deliveries", params=params).json()
                if all(d["attempts"] >= 1 for d in listed["deliveries"]):
                    break
                deadline_polls += 1
                assert deadline_polls < 2000, listed
                threading.Event().wait(0.01)
            texts = {
                "deliveries": json.dumps(listed),
                "metrics": http.get("/metrics").text,
                "openapi": http.get("/openapi.json").text,
            }
            for delivery in listed["deliveries"]:
                texts[delivery["id"]] = http.get(f"/v1/deliveries/{delivery['id']}").text
    finally:
        server.send_signal(signal.SIGTERM)
        out, err = server.communicate(timeout=TIMEOUT)
    assert server.returncode == 0, err
    assert "attempt delivery=" in err  # the log has one line per attempt
    texts["log"] = out + err
    for where, text in texts.items():
        _assert_clean(where, text)
        assert api_token not in text, f"the API token leaked into {where}"
