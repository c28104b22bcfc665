"""`plan --org` and `apply --org` with an organization that is neither in the
definitions nor in the live state: an error naming it, with a did-you-mean, exit 1,
and nothing changed (never "No changes", which would hide the typo)."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.store.sqlite import SqliteStore
from tests.support.helpers_state import (
    assert_no_traceback,
    cli_env,
    definition,
    make_state,
    put_specs,
    run_cli,
    spec,
    write_definition,
)


@pytest.fixture
def project(tmp_path: Path) -> tuple[Path, dict[str, str], Path]:
    folder = tmp_path / "webhooks.d"
    write_definition(folder, "acme", definition("a"))
    db = tmp_path / "state.db"
    make_state(f"sqlite:///{db}")
    store = SqliteStore(db)
    try:
        put_specs(store, [spec("old", "globex")])  # live only, no files
    finally:
        store.close()
    return tmp_path, cli_env(RECONCILER_STATE=f"sqlite:///{db}"), db


@pytest.mark.parametrize("command", [["plan"], ["apply", "--auto-approve", "--actor", "a"]])
def test_an_unknown_organization_is_an_error_with_a_did_you_mean(
    project: tuple[Path, dict[str, str], Path], command: list[str]
) -> None:
    cwd, env, db = project
    before = db.read_bytes()
    typo = run_cli([*command, "--org", "acmee"], cwd, env)
    assert typo.returncode == 1
    assert_no_traceback(typo.stderr)
    assert typo.stderr == (
        "error: --org acmee: no such organization in the definitions or the live state "
        "(did you mean 'acme'?)\n"
    )
    assert "No changes" not in typo.stdout
    nothing_close = run_cli([*command, "--org", "zzz"], cwd, env)
    assert nothing_close.returncode == 1
    assert nothing_close.stderr.endswith("(known: acme, globex)\n")
    assert db.read_bytes() == before


def test_an_organization_only_in_the_files_or_only_live_is_known(
    project: tuple[Path, dict[str, str], Path],
) -> None:
    cwd, env, _db = project
    in_files = run_cli(["plan", "--org", "acme"], cwd, env)
    assert in_files.returncode == 0, in_files.stderr
    assert "+ a" in in_files.stdout
    live_only = run_cli(["plan", "--org", "globex"], cwd, env)
    assert live_only.returncode == 0, live_only.stderr
    assert "- old" in live_only.stdout


def test_a_first_apply_with_an_unknown_organization_makes_no_state(tmp_path: Path) -> None:
    folder = tmp_path / "webhooks.d"
    write_definition(folder, "acme", definition("a"))
    db = tmp_path / "new" / "state.db"
    env = cli_env(RECONCILER_STATE=f"sqlite:///{db}")
    typo = run_cli(["apply", "--auto-approve", "--actor", "a", "--org", "acmee"], tmp_path, env)
    assert typo.returncode == 1
    assert typo.stderr == (
        "error: --org acmee: no such organization in the definitions or the live state "
        "(did you mean 'acme'?)\n"
    )
    assert not db.exists()
    assert not db.parent.exists()
    first = run_cli(["apply", "--auto-approve", "--actor", "a", "--org", "acme"], tmp_path, env)
    assert first.returncode == 0, first.stderr
    assert db.is_file()
