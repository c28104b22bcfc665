"""`reconciler init` writes exactly the files of tests/golden/: a change to a
template shows up here as a diff to review, byte for byte.

The golden files hold `<version>` where the release (`reconciler.__version__`)
goes; the JSON Schema is compared with the committed schemas/webhook.schema.json.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import pytest

from reconciler import __version__
from tests.support.helpers_state import REPO, run_cli

GOLDEN = REPO / "tests" / "golden"
SCHEMA = "schemas/webhook.schema.json"


def init_transcript(folder: Path, args: list[str]) -> str:
    """What `reconciler init ARGS` prints and writes, as one text: the output,
    then each file under a `==> path <==` line, in the order init writes them."""
    made = run_cli(["init", *args], folder)
    assert made.returncode == 0, made.stderr
    parts = [f"$ reconciler init {' '.join(args)}\n", made.stdout]
    for line in made.stdout.splitlines()[:-1]:  # `wrote PATH` lines, then `Next: ...`
        relative = line.removeprefix("wrote ")
        if relative == SCHEMA:
            continue
        parts.append(f"==> {relative} <==\n")
        parts.append((folder / relative).read_text(encoding="utf-8"))
    return "".join(parts).replace(__version__, "<version>")


@pytest.mark.parametrize(
    ("golden", "args"),
    [
        ("init-default.txt", ["--admins", "@acme-corp/webhook-admins"]),
        ("init-acme-corp.txt", ["--org", "acme-corp", "--admins", "@acme-corp/platform"]),
    ],
)
def test_init_writes_the_golden_files(tmp_path: Path, golden: str, args: list[str]) -> None:
    written = init_transcript(tmp_path, args)
    expected = (GOLDEN / golden).read_text(encoding="utf-8")
    assert written == expected, "".join(
        difflib.unified_diff(
            expected.splitlines(keepends=True),
            written.splitlines(keepends=True),
            f"tests/golden/{golden}",
            "reconciler init",
        )
    )
    schema = (tmp_path / SCHEMA).read_text(encoding="utf-8")
    assert schema == (REPO / SCHEMA).read_text(encoding="utf-8")
