"""Who applies, and from which commit: what the audit log records with each change."""

from __future__ import annotations

import getpass
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path

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


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        result = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, check=False, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    out = result.stdout.strip()
    return out if result.returncode == 0 and out else None
