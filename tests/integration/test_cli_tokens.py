"""`reconciler tokens create | list | revoke`, run as a user runs them: real processes."""

from __future__ import annotations

import json
import re
import sqlite3
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from reconciler.tokens import token_hash
from tests.support.helpers_state import make_state, run_cli

TOKEN = re.compile(r"rcn_[A-Za-z0-9_-]{43}")


@pytest.fixture
def state(absent: str) -> str:
    """A state made before the test, as `reconciler migrate` makes it."""
    return make_state(absent)


@pytest.fixture
def absent(tmp_path: Path) -> str:
    """The URL of a state that is not there."""
    return f"sqlite:///{tmp_path / 'state.db'}"


def tokens(tmp_path: Path, state: str, *args: str) -> tuple[int, str, str]:
    result = run_cli(["tokens", *args, "--state", state], tmp_path)
    return result.returncode, result.stdout, result.stderr


def listed(tmp_path: Path, state: str) -> list[dict[str, object]]:
    code, out, err = tokens(tmp_path, state, "list", "--format", "json")
    assert code == 0, err
    return json.loads(out)  # type: ignore[no-any-return]


def test_create_prints_the_token_alone_and_stores_only_its_hash(tmp_path: Path, state: str) -> None:
    code, out, err = tokens(
        tmp_path, state, "create", "--role", "publisher", "--org", "acme", "--name", "rules"
    )
    assert code == 0, err
    assert TOKEN.fullmatch(out.rstrip("\n")) and out.endswith("\n") and out.count("\n") == 1
    secret = out.strip()
    assert re.fullmatch(
        r"created tok_[0-9a-f]{12}: role publisher for acme, no expiry\. "
        r"This is the only time the token is shown: keep it now\.\n",
        err,
    ), err
    with sqlite3.connect(tmp_path / "state.db") as db:
        dump = "\n".join(db.iterdump())
    assert secret not in dump
    assert token_hash(secret) in dump


def test_list_shows_every_token_but_never_a_secret_or_hash(tmp_path: Path, state: str) -> None:
    _, partner, _ = tokens(
        tmp_path, state, "create", "--role", "admin", "--org", "globex", "--org", "acme",
        "--name", "partner-x", "--expires", "30d",
    )  # fmt: skip
    _, everyone, _ = tokens(tmp_path, state, "create", "--role", "auditor", "--all-orgs")

    code, out, err = tokens(tmp_path, state, "list")
    assert code == 0, err
    header, first, second = out.splitlines()
    assert header.split() == [
        "ID", "NAME", "ROLE", "ORGANIZATIONS", "CREATED", "EXPIRES", "REVOKED", "STATUS",
    ]  # fmt: skip
    assert first.split()[1:4] == ["partner-x", "admin", "acme,globex"]
    assert first.split()[-2:] == ["-", "active"]
    assert second.split()[1:4] == ["-", "auditor", "*"]
    for secret in (partner.strip(), everyone.strip()):
        assert secret not in out
        assert token_hash(secret) not in out

    as_json = listed(tmp_path, state)
    assert [t["role"] for t in as_json] == ["admin", "auditor"]
    assert as_json[0]["organizations"] == ["acme", "globex"]
    assert as_json[1]["organizations"] == "*"
    created = datetime.fromisoformat(str(as_json[0]["created_at"]))
    expires = datetime.fromisoformat(str(as_json[0]["expires_at"]))
    assert expires - created == timedelta(days=30)  # ISO 8601 UTC, to the second
    assert all("token" not in t and "token_hash" not in t for t in as_json)


def test_revoke(tmp_path: Path, state: str) -> None:
    tokens(tmp_path, state, "create", "--role", "admin", "--org", "acme")
    (token,) = listed(tmp_path, state)

    code, out, err = tokens(tmp_path, state, "revoke", str(token["id"]))
    assert (code, out) == (0, f"revoked {token['id']} (role admin for acme).\n"), err
    (after,) = listed(tmp_path, state)
    assert after["status"] == "revoked"
    revoked = datetime.fromisoformat(str(after["revoked_at"])).timestamp()
    assert time.time() - 600 < revoked <= time.time() + 1

    again = tokens(tmp_path, state, "revoke", str(token["id"]))
    assert again[0] == 0 and again[1].startswith(f"{token['id']} was already revoked at ")
    assert listed(tmp_path, state) == [after]

    unknown = tokens(tmp_path, state, "revoke", "tok_nope")
    assert unknown[:2] == (1, "")
    assert unknown[2] == "error: no token tok_nope (see `reconciler tokens list`)\n"


def test_create_with_json_output(tmp_path: Path, state: str) -> None:
    code, out, _ = tokens(
        tmp_path, state, "create", "--role", "auditor", "--org", "acme", "--format", "json"
    )
    assert code == 0
    made = json.loads(out)
    assert TOKEN.fullmatch(made["token"])
    assert {k: made[k] for k in ("role", "organizations", "expires_at", "revoked_at")} == {
        "role": "auditor",
        "organizations": ["acme"],
        "expires_at": None,
        "revoked_at": None,
    }
    (stored,) = listed(tmp_path, state)
    assert stored["id"] == made["id"]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--role", "admin"], "give --org ORG (repeatable), or --all-orgs"),
        (["--role", "admin", "--org", "acme", "--all-orgs"], "not both"),
        (["--role", "root", "--org", "acme"], "Invalid value for '--role'"),
        (["--org", "acme"], "Missing option '--role'"),
        (["--role", "admin", "--org", "Acme Corp"], "not a valid organization name"),
        (["--role", "admin", "--org", "acme", "--expires", "soon"], "not a lifetime: 'soon'"),
        (["--role", "admin", "--org", "acme", "--expires", "0d"], "in the future"),
    ],
)
def test_a_token_asked_for_wrongly_is_a_usage_error(
    tmp_path: Path, absent: str, args: list[str], words: str
) -> None:
    code, out, err = tokens(tmp_path, absent, "create", *args)
    assert code == 2
    assert out == ""
    assert words in err
    assert not (tmp_path / "state.db").exists()  # nothing made, not even the state


def test_create_list_and_revoke_need_an_existing_state(tmp_path: Path, absent: str) -> None:
    for args in (["create", "--role", "admin", "--org", "acme"], ["list"], ["revoke", "tok_x"]):
        code, out, err = tokens(tmp_path, absent, *args)
        assert code == 1
        assert out == ""  # no token printed for a state that is not there
        assert err.startswith(f"error: no state at {absent}: no such file ")
    assert not (tmp_path / "state.db").exists()


def test_an_empty_list(tmp_path: Path, absent: str) -> None:
    state = absent
    assert run_cli(["migrate", "--state", state], tmp_path).returncode == 0  # makes it
    assert tokens(tmp_path, state, "list")[:2] == (0, "No tokens.\n")
    assert tokens(tmp_path, state, "list", "--format", "json")[:2] == (0, "[]\n")
