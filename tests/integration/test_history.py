"""history: who changed which webhook, when, from which commit; never a secret."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from reconciler.store.sqlite import SqliteStore
from tests.support.helpers_state import (
    SUBPROCESS_TIMEOUT,
    audit_rows,
    cli_env,
    definition,
    run_cli,
    sqlite_url,
    write_definition,
)

SECRETS = ("abc123", "def456")


def git(repo: Path, *args: str) -> str:
    result = subprocess.run(
        [
            "git",
            "-c",
            "user.name=Committer",
            "-c",
            "user.email=committer@example.com",
            "-c",
            "commit.gpgsign=false",
            "-c",
            "init.defaultBranch=main",
            *args,
        ],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
        timeout=SUBPROCESS_TIMEOUT,
    )
    return result.stdout.strip()


@dataclass
class Story:
    """A repository whose definitions went through several applies."""

    root: Path
    db: Path
    commits: list[str]
    checksums: list[str]  # of the plan each apply applied

    def cli(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return run_cli(list(args), self.root, cli_env(RECONCILER_STATE=sqlite_url(self.db), **env))

    def history(self, *args: str) -> str:
        result = self.cli("history", *args)
        assert result.returncode == 0, result.stderr
        return result.stdout

    def history_json(self, *args: str) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = json.loads(self.history("--format", "json", *args))
        return entries


@pytest.fixture(scope="module")
def story(tmp_path_factory: pytest.TempPathFactory) -> Story:
    root = tmp_path_factory.mktemp("history")
    folder = root / "webhooks.d"
    db = root / ".reconciler" / "state.db"
    (root / ".gitignore").write_text(".reconciler/\n")
    git(root, "init", "-q")
    told = Story(root, db, [], [])
    plans = tmp_path_factory.mktemp("plans")

    def checkpoint(message: str) -> None:
        git(root, "add", "-A")
        git(root, "commit", "-q", "-m", message)
        told.commits.append(git(root, "rev-parse", "HEAD"))

    made = told.cli("migrate")  # the state the first plan compares with
    assert made.returncode == 0, made.stderr

    def apply(*args: str, **env: str) -> None:
        # The plan a reviewer saw, saved and applied as it is: the audit log names it.
        saved = plans / f"plan-{len(told.checksums)}.json"
        planned = told.cli("plan", "--format", "json", "--out", str(saved))
        assert planned.returncode == 0, planned.stderr
        told.checksums.append(json.loads(planned.stdout)["checksum"])
        applied = told.cli("apply", "--auto-approve", "--plan", str(saved), *args, **env)
        assert applied.returncode == 0, applied.stderr

    # 1. three webhooks, committed, applied by alice
    write_definition(
        folder,
        "acme",
        definition("alpha", headers={"Authorization": "Bearer ${env:ACME_TOKEN}"}),
    )
    write_definition(
        folder,
        "acme",
        definition(
            "legacy",
            headers={"Authorization": "Bearer abc123"},
            allow_literal=["headers.Authorization"],
        ),
    )
    write_definition(folder, "globex", definition("delta"))
    checkpoint("add webhooks")
    apply("--actor", "alice")

    # 2. two edits, committed, applied in CI (GITHUB_ACTOR, no --actor)
    write_definition(
        folder,
        "acme",
        definition(
            "alpha",
            url="https://new.example.com/alpha",
            headers={"Authorization": "Bearer ${env:ACME_TOKEN_V2}"},
        ),
    )
    write_definition(
        folder,
        "acme",
        definition(
            "legacy",
            headers={"Authorization": "Bearer def456"},
            allow_literal=["headers.Authorization"],
        ),
    )
    checkpoint("edit webhooks")
    apply(GITHUB_ACTOR="octocat")

    # 3. a delete not yet committed (a dirty tree), applied by carol
    (folder / "globex" / "delta.yaml").unlink()
    apply("--actor", "carol", "--allow-delete", "--force")

    # 4. the dispatcher pauses a webhook
    store = SqliteStore(db)
    try:
        store.pause("acme", "alpha", "HTTP 410 Gone", actor="dispatcher")
    finally:
        store.close()
    return told


def test_history_json_lists_every_change_newest_first(story: Story) -> None:
    entries = story.history_json()
    assert [(e["action"], e["organization"], e["name"]) for e in entries] == [
        ("pause", "acme", "alpha"),
        ("delete", "globex", "delta"),
        ("update", "acme", "legacy"),
        ("update", "acme", "alpha"),
        ("create", "globex", "delta"),
        ("create", "acme", "legacy"),
        ("create", "acme", "alpha"),
    ]
    assert [e["serial"] for e in entries] == [4, 3, 2, 2, 1, 1, 1]
    assert [e["actor"] for e in entries] == [
        "dispatcher",
        "carol",
        "octocat",
        "octocat",
        "alice",
        "alice",
        "alice",
    ]


def test_history_records_the_git_commit(story: Story) -> None:
    first, second = story.commits
    commits = [e["git_commit"] for e in story.history_json()]
    assert commits == [None, f"{second}+dirty", second, second, first, first, first]


def test_history_records_the_plan_checksum(story: Story) -> None:
    created, updated, deleted = story.checksums
    assert [e["plan_checksum"] for e in story.history_json()] == [
        None,
        deleted,
        updated,
        updated,
        created,
        created,
        created,
    ]


def test_history_json_holds_references_not_secrets(story: Story) -> None:
    entries = {(e["action"], e["name"]): e for e in story.history_json()}
    alpha = entries[("update", "alpha")]
    assert alpha["before"]["headers"] == {"Authorization": "Bearer ${env:ACME_TOKEN}"}
    assert alpha["after"]["headers"] == {"Authorization": "Bearer ${env:ACME_TOKEN_V2}"}
    assert alpha["after"]["url"] == "https://new.example.com/alpha"
    legacy = entries[("update", "legacy")]
    assert legacy["before"]["headers"] == {"Authorization": "****"}
    assert legacy["after"]["headers"] == {"Authorization": "****"}
    created = entries[("create", "legacy")]
    assert created["before"] is None
    assert created["after"]["headers"] == {"Authorization": "****"}
    deleted = entries[("delete", "delta")]
    assert deleted["before"]["name"] == "delta"
    assert deleted["after"] is None
    assert entries[("pause", "alpha")]["note"] == "HTTP 410 Gone"


def test_history_text_shows_who_what_and_from_which_commit(story: Story) -> None:
    first, second = story.commits
    lines = story.history().splitlines()
    headers = [line for line in lines if not line.startswith("    ")]
    assert len(headers) == 7
    expected = [
        "  pause   acme/alpha  by dispatcher",
        f"  delete  globex/delta  by carol commit {second[:12]}+dirty",
        f"  update  acme/legacy  by octocat commit {second[:12]}",
        f"  update  acme/alpha  by octocat commit {second[:12]}",
        f"  create  globex/delta  by alice commit {first[:12]}",
        f"  create  acme/legacy  by alice commit {first[:12]}",
        f"  create  acme/alpha  by alice commit {first[:12]}",
    ]
    for header, tail in zip(headers, expected, strict=True):
        assert tail in header, (header, tail)
    text = "\n".join(lines)
    assert '    url: "https://hooks.example.com/alpha" -> "https://new.example.com/alpha"' in text
    assert (
        '    headers.Authorization: "Bearer ${env:ACME_TOKEN}" -> "Bearer ${env:ACME_TOKEN_V2}"'
        in text
    )
    # the audit log holds only masked values, so a changed literal credential
    # shows no old or new value at all
    assert "****" not in text
    assert "    note: HTTP 410 Gone" in text


def test_history_text_shows_the_plan_checksum(story: Story) -> None:
    # The checksum ties an entry to the plan a reviewer saw (the markdown plan
    # comment shows it); the text form should show it as the JSON form does.
    text = story.history()
    for checksum in story.checksums:
        assert checksum.removeprefix("sha256:")[:12] in text


def test_history_filters_by_name(story: Story) -> None:
    entries = story.history_json("alpha")
    assert [(e["action"], e["name"]) for e in entries] == [
        ("pause", "alpha"),
        ("update", "alpha"),
        ("create", "alpha"),
    ]
    text = story.history("alpha")
    assert "acme/alpha" in text
    assert "legacy" not in text
    assert "delta" not in text


def test_history_filters_by_organization(story: Story) -> None:
    entries = story.history_json("--org", "globex")
    assert [(e["action"], e["name"]) for e in entries] == [("delete", "delta"), ("create", "delta")]
    assert story.history_json("delta", "--org", "globex") == entries
    # A webhook the audit log does not know in that organization: not found, exit 1.
    for fmt in ("text", "json"):
        unknown = story.cli("history", "alpha", "--org", "globex", "--format", fmt)
        assert unknown.returncode == 1
        assert unknown.stdout == ""
        assert unknown.stderr.startswith(
            "error: no webhook alpha of organization globex in the audit log at "
        )


def test_history_limit(story: Story) -> None:
    assert [e["action"] for e in story.history_json("--limit", "2")] == ["pause", "delete"]
    assert (
        len([line for line in story.history("--limit", "3").splitlines() if line[:1] != " "]) == 3
    )


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["--format", "json"],
        ["legacy"],
        ["legacy", "--format", "json"],
        ["--org", "acme"],
    ],
)
def test_a_literal_credential_never_appears_in_history(story: Story, args: list[str]) -> None:
    output = story.history(*args)
    for secret in SECRETS:
        assert secret not in output


def test_a_literal_credential_never_appears_in_the_audit_rows(story: Story) -> None:
    rows = audit_rows(story.db)
    assert len(rows) == 7
    dumped = repr(rows)
    for secret in SECRETS:
        assert secret not in dumped
    # (the live spec keeps it: the dispatcher needs it to send)
    store = SqliteStore(story.db)
    try:
        legacy = next(w for w in store.webhooks() if w.name == "legacy")
    finally:
        store.close()
    assert "def456" in legacy.spec


def test_the_actor_falls_back_to_git_user(tmp_path: Path) -> None:
    git(tmp_path, "init", "-q")
    git(tmp_path, "config", "user.name", "Gita Author")
    git(tmp_path, "config", "user.email", "gita@example.com")
    write_definition(tmp_path / "webhooks.d", "acme", definition("alpha"))
    state = sqlite_url(tmp_path / "state.db")
    env = cli_env(RECONCILER_STATE=state)
    applied = run_cli(["apply", "--auto-approve"], tmp_path, env)
    assert applied.returncode == 0, applied.stderr
    assert "actor Gita Author <gita@example.com>" in applied.stdout
    (entry,) = json.loads(run_cli(["history", "--format", "json"], tmp_path, env).stdout)
    assert entry["actor"] == "Gita Author <gita@example.com>"
    assert entry["git_commit"] is None  # a repository without a commit


def test_the_actor_option_wins_over_ci_variables(tmp_path: Path) -> None:
    write_definition(tmp_path / "webhooks.d", "acme", definition("alpha"))
    env = cli_env(RECONCILER_STATE=sqlite_url(tmp_path / "s.db"), GITHUB_ACTOR="octocat")
    applied = run_cli(["apply", "--auto-approve", "--actor", "alice"], tmp_path, env)
    assert applied.returncode == 0, applied.stderr
    (entry,) = json.loads(run_cli(["history", "--format", "json"], tmp_path, env).stdout)
    assert entry["actor"] == "alice"
    assert entry["git_commit"] is None  # not in a git repository


def test_history_of_a_new_state_is_empty(tmp_path: Path) -> None:
    env = cli_env(RECONCILER_STATE=sqlite_url(tmp_path / "s.db"))
    assert run_cli(["migrate"], tmp_path, env).returncode == 0
    assert run_cli(["history"], tmp_path, env).stdout.strip() == "No history."
    assert json.loads(run_cli(["history", "--format", "json"], tmp_path, env).stdout) == []


def test_history_of_a_state_that_does_not_exist_is_an_error_and_creates_nothing(
    tmp_path: Path,
) -> None:
    env = cli_env(RECONCILER_STATE=sqlite_url(tmp_path / "typo" / "s.db"))
    result = run_cli(["history"], tmp_path, env)
    assert result.returncode == 1
    assert result.stderr.startswith("error: no state at ")
    assert not (tmp_path / "typo").exists()
