"""apply refuses definitions at a commit older than, or unrelated to, the one the
live state was last applied from; plan shows that commit. Real git repositories,
the real CLI."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result

from reconciler.cli import cli
from reconciler.store import open_store
from tests.support.helpers_state import (
    definition,
    live_specs,
    make_state,
    sqlite_url,
    write_definition,
)


def git(repo: Path, *args: str) -> str:
    result = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.strip()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def state(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return sqlite_url(tmp_path / "state.db")
    url: str = request.getfixturevalue("postgres_url")
    return url


class Repo:
    def __init__(self, root: Path, state: str) -> None:
        self.root = root
        self.folder = root / "webhooks.d"
        self.state = state
        root.mkdir()
        git(root, "init", "-q", "-b", "main")

    def commit(self, url: str, message: str = "change") -> str:
        write_definition(self.folder, "acme", definition("slack", url=url))
        git(self.root, "add", ".")
        git(self.root, "commit", "-q", "-m", message)
        return git(self.root, "rev-parse", "HEAD")

    def run(self, *args: str) -> Result:
        return CliRunner().invoke(
            cli, [*args, str(self.folder), "--state", self.state], catch_exceptions=False
        )

    def apply(self, *flags: str, actor: str = "alice") -> Result:
        return self.run("apply", "--auto-approve", "--actor", actor, *flags)

    def live_url(self) -> str:
        store = open_store(self.state)
        try:
            return str(live_specs(store)[("acme", "slack")]["url"])
        finally:
            store.close()

    def history(self) -> list[dict[str, Any]]:
        result = CliRunner().invoke(
            cli, ["history", "--state", self.state, "--format", "json"], catch_exceptions=False
        )
        entries: list[dict[str, Any]] = json.loads(result.output)
        return entries


ONE, TWO = "https://hooks.example.com/one", "https://hooks.example.com/two"


@pytest.fixture
def repo(tmp_path: Path, state: str) -> Repo:
    return Repo(tmp_path / "repo", state)


def test_an_older_commit_is_refused_and_changes_nothing(repo: Repo) -> None:
    c1 = repo.commit(ONE)
    assert repo.apply().exit_code == 0
    c2 = repo.commit(TWO)
    assert repo.apply(actor="bob").exit_code == 0
    git(repo.root, "checkout", "-q", c1)
    before = repo.history()

    result = repo.apply()

    assert result.exit_code == 1
    error = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(error) == 1
    assert error[0].startswith(
        f"error: {repo.folder} is at commit {c1[:7]}, older than the live state's {c2[:7]} "
        "(applied by bob at "
    )
    assert "--allow-rollback" in error[0]
    assert repo.live_url() == TWO
    assert repo.history() == before


def test_allow_rollback_applies_it_and_the_audit_log_notes_it(repo: Repo) -> None:
    c1 = repo.commit(ONE)
    repo.apply()
    c2 = repo.commit(TWO)
    repo.apply()
    git(repo.root, "checkout", "-q", c1)

    result = repo.apply("--allow-rollback")

    assert result.exit_code == 0, result.output
    assert repo.live_url() == ONE
    newest = repo.history()[0]
    assert newest["git_commit"] == c1
    assert f"from live commit {c2[:7]} to older commit {c1[:7]}" in newest["note"]
    assert "--allow-rollback" in newest["note"]


def test_a_newer_commit_and_a_dirty_tree_at_the_live_commit_apply(repo: Repo) -> None:
    repo.commit(ONE)
    repo.apply()
    c2 = repo.commit(TWO)
    assert repo.apply().exit_code == 0
    write_definition(repo.folder, "acme", definition("slack", url=ONE))  # uncommitted

    result = repo.apply()

    assert result.exit_code == 0, result.output
    assert repo.history()[0]["git_commit"] == f"{c2}+dirty"
    assert repo.history()[0]["note"] is None


def test_a_dirty_tree_compares_by_its_head(repo: Repo) -> None:
    c1 = repo.commit(ONE)
    repo.apply()
    repo.commit(TWO)
    repo.apply()
    git(repo.root, "checkout", "-q", c1)
    write_definition(repo.folder, "acme", definition("slack", url="https://hooks.example.com/x"))

    result = repo.apply()

    assert result.exit_code == 1
    assert f"is at commit {c1[:7]}+dirty, older than" in result.output
    assert repo.live_url() == TWO


def test_an_unrelated_history_is_refused(repo: Repo) -> None:
    repo.commit(ONE)
    repo.apply()
    git(repo.root, "checkout", "-q", "--orphan", "other")
    other = repo.commit(TWO, "unrelated")

    result = repo.apply()

    assert result.exit_code == 1
    assert f"is at commit {other[:7]}, which does not contain the live state's" in result.output
    assert repo.live_url() == ONE


def test_a_diverged_branch_is_refused(repo: Repo) -> None:
    c1 = repo.commit(ONE)
    repo.apply()
    repo.commit(TWO)
    repo.apply()
    git(repo.root, "checkout", "-q", "-b", "side", c1)
    repo.commit("https://hooks.example.com/side")

    result = repo.apply()

    assert result.exit_code == 1
    assert "which does not contain the live state's" in result.output
    assert repo.live_url() == TWO


def test_a_live_commit_this_clone_does_not_have_warns_and_applies(
    repo: Repo, tmp_path: Path
) -> None:
    elsewhere = Repo(tmp_path / "elsewhere", repo.state)
    unknown = elsewhere.commit(ONE)
    elsewhere.apply()
    repo.commit(TWO)

    result = repo.apply()

    assert result.exit_code == 0, result.output
    assert f"Warning: cannot tell whether {repo.folder}" in result.output
    assert f"the live state's {unknown[:7]}" in result.output
    assert "does not have that commit" in result.output
    assert repo.live_url() == TWO


def test_a_commit_equal_to_the_live_one_with_nothing_to_apply_is_fine(repo: Repo) -> None:
    c1 = repo.commit(ONE)
    repo.apply()
    repo.commit(TWO)
    repo.apply()
    git(repo.root, "checkout", "-q", c1)
    # The older commit's definitions, once live again, leave nothing to revert.
    repo.apply("--allow-rollback")
    git(repo.root, "checkout", "-q", "main")
    result = repo.apply()
    assert result.exit_code == 0, result.output


def test_plan_shows_the_live_commit_and_warns_when_older(repo: Repo) -> None:
    c1 = repo.commit(ONE)
    make_state(repo.state)
    fresh = repo.run("plan")
    assert fresh.exit_code == 0
    assert "Live state:" not in fresh.output  # no apply recorded a commit yet
    repo.apply()
    c2 = repo.commit(TWO)
    repo.apply(actor="bob")

    same = repo.run("plan")
    assert f"Live state: commit {c2[:7]} (applied by bob at " in same.output
    assert "Apply will refuse" not in same.output

    git(repo.root, "checkout", "-q", c1)
    text = repo.run("plan")
    assert text.exit_code == 0
    assert f"Live state: commit {c2[:7]} (applied by bob at " in text.output
    assert f"is at commit {c1[:7]}, older than the live state's {c2[:7]}" in text.output
    assert "Apply will refuse this plan unless:" in text.output

    data = json.loads(repo.run("plan", "--format", "json").output)
    assert data["live_commit"]["commit"] == c2
    assert data["live_commit"]["actor"] == "bob"
    assert data["live_commit"]["definitions_commit"] == c1
    assert data["live_commit"]["relation"] == "older"
    assert "older than the live state's" in data["refusals"][0]

    markdown = repo.run("plan", "--format", "markdown").output
    assert f"live commit `{c2[:7]}` (applied by bob at " in markdown.splitlines()[-1]


def test_the_check_is_per_organization_scope(repo: Repo) -> None:
    """An organization's apply compares with its own last commit."""
    write_definition(repo.folder, "globex", definition("pager"))
    c1 = repo.commit(ONE)
    repo.apply()
    repo.commit(TWO)  # changes acme only
    repo.run("apply", "--auto-approve", "--org", "acme")
    git(repo.root, "checkout", "-q", c1)
    text = yaml.safe_dump(definition("pager", url="https://hooks.example.com/p2"))
    (repo.folder / "globex" / "pager.yaml").write_text(text, encoding="utf-8")

    globex = CliRunner().invoke(
        cli,
        ["apply", str(repo.folder / "globex"), "--state", repo.state, "--auto-approve"],
        catch_exceptions=False,
    )
    assert globex.exit_code == 0, globex.output
    whole = repo.apply()
    assert whole.exit_code == 1
    assert "older than the live state's" in whole.output
