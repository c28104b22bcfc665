"""Who applies, and from which commit: what the audit log records with each change."""

from __future__ import annotations

import getpass
import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from reconciler.store.base import AuditEntry

# CI systems name the person or bot that started the job in one of these.
CI_ACTOR_VARIABLES = (
    "GITHUB_ACTOR",
    "GITLAB_USER_LOGIN",
    "BUILDKITE_BUILD_CREATOR",
    "CIRCLE_USERNAME",
    "BITBUCKET_STEP_TRIGGERER_UUID",
    "BUILD_REQUESTEDFOR",  # Azure Pipelines
)


def detect_actor(explicit: str | None, env: Mapping[str, str] | None = None) -> str:
    """--actor, else the CI's variables, else git's user, else the login name."""
    if explicit:
        return explicit
    env = os.environ if env is None else env
    for variable in CI_ACTOR_VARIABLES:
        if env.get(variable):
            return env[variable]
    name = _git(["config", "user.name"], Path.cwd())
    email = _git(["config", "user.email"], Path.cwd())
    if name:
        return f"{name} <{email}>" if email else name
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def git_commit(path: Path) -> str | None:
    """The commit the definitions at `path` come from, marked when they differ from it."""
    folder = path if path.is_dir() else path.parent
    if not folder.exists():
        return None
    commit = _git(["rev-parse", "HEAD"], folder)
    if commit is None:
        return None
    dirty = _git(["status", "--porcelain", "--", "."], folder)
    return f"{commit}+dirty" if dirty else commit


# How the definitions' commit stands to the live state's, as git can prove it:
# the same commit, newer (descends from it), older (an ancestor of it), unrelated
# (neither contains the other), or unknown (git cannot tell: no live commit, no
# repository, the live commit missing here, e.g. in a shallow clone).
Relation = Literal["same", "newer", "older", "unrelated", "unknown"]


@dataclass(frozen=True)
class CommitCheck:
    """The definitions' commit beside the commit the live state was last applied from."""

    folder: str  # the definitions folder, as named on the command line
    commit: str | None  # the definitions' commit, "+dirty" when they differ from it
    live: AuditEntry | None  # the newest audit entry naming a commit, in the scope
    relation: Relation
    why_unknown: str | None = None

    @property
    def live_commit(self) -> str | None:
        return self.live.record.git_commit if self.live is not None else None

    def live_line(self) -> str:
        """`Live state: commit def5678 (applied by alice at ...)`."""
        return f"Live state: commit {self.live_text()}"

    def live_text(self) -> str:
        assert self.live is not None
        return f"{short(self.live_commit)} (applied by {self.live.record.actor} at {self.live.at})"

    def refusal(self) -> str | None:
        """Why apply refuses without --allow-rollback; None when it may go ahead."""
        if self.relation == "older":
            return (
                f"{self.folder} is at commit {short(self.commit)}, older than the live state's "
                f"{self.live_text()}: applying it would revert newer changes; re-run with "
                "--allow-rollback if that is intended"
            )
        if self.relation == "unrelated":
            return (
                f"{self.folder} is at commit {short(self.commit)}, which does not contain the "
                f"live state's {self.live_text()}: applying it would revert the changes only "
                "that history has; re-run with --allow-rollback if that is intended"
            )
        return None

    def warning(self) -> str | None:
        """Said when git cannot tell, and apply goes on."""
        if self.relation != "unknown" or self.live is None:
            return None
        return (
            f"cannot tell whether {self.folder} (commit {short(self.commit)}) is older than "
            f"the live state's {self.live_text()}: {self.why_unknown}; applying anyway"
        )

    def rollback_note(self) -> str | None:
        """The audit log's note when --allow-rollback let an older commit through."""
        if self.refusal() is None:
            return None
        kind = "older" if self.relation == "older" else "unrelated"
        return (
            f"rollback (--allow-rollback): from live commit {short(self.live_commit)} "
            f"to {kind} commit {short(self.commit)}"
        )

    def as_json(self) -> dict[str, object] | None:
        if self.live is None:
            return None
        return {
            "commit": self.live_commit,
            "actor": self.live.record.actor,
            "at": self.live.at,
            "definitions_commit": self.commit,
            "relation": self.relation,
        }


def short(commit: str | None) -> str:
    if commit is None:
        return "(none)"
    head, plus, mark = commit.partition("+")
    return head[:7] + plus + mark


def check_commit(
    folder: Path, shown: str, commit: str | None, live: AuditEntry | None
) -> CommitCheck:
    """Compare `commit` (the definitions', as recorded) with the live state's.

    A dirty tree compares by its HEAD. Apply refuses only what git proves older
    or unrelated; whatever git cannot tell is "unknown", warned about.
    """
    live_commit = live.record.git_commit if live is not None else None

    def result(relation: Relation, why: str | None = None) -> CommitCheck:
        return CommitCheck(shown, commit, live, relation, why)

    if live_commit is None:
        return result("unknown", "no apply recorded a commit")
    if commit is None:
        return result("unknown", f"{shown} is not in a git repository")
    new, old = commit.split("+")[0], live_commit.split("+")[0]
    if new == old:
        return result("same")
    cwd = folder if folder.is_dir() else folder.parent
    if _git(["cat-file", "-t", f"{old}^{{commit}}"], cwd) != "commit":
        return result("unknown", "this repository does not have that commit (a shallow clone?)")
    if _git_ok(["merge-base", "--is-ancestor", old, new], cwd):
        return result("newer")
    if _git_ok(["merge-base", "--is-ancestor", new, old], cwd):
        return result("older")
    if _git(["rev-parse", "--is-shallow-repository"], cwd) == "true":
        return result("unknown", "this shallow clone does not hold the history joining them")
    return result("unrelated")


def _git_ok(args: list[str], cwd: Path) -> bool:
    try:
        result = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, check=False, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return result.returncode == 0


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        result = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, check=False, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    out = result.stdout.strip()
    return out if result.returncode == 0 and out else None
