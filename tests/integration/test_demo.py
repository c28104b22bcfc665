"""`reconciler demo` as a user runs it: a real process that applies, serves, fires and
reports the deliveries, then leaves nothing running and nothing behind."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _demo(*args: str, cwd: Path, tmp: Path) -> subprocess.CompletedProcess[str]:
    """The demo with its scratch folder made under `tmp`."""
    tmp.mkdir(exist_ok=True)
    return subprocess.run(
        [sys.executable, "-m", "reconciler", "demo", *args],
        cwd=cwd,
        env={**os.environ, "TMPDIR": str(tmp)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _scratch(output: str) -> Path:
    found = re.search(r"Definitions copied to (\S+)/webhooks\.d", output)
    assert found, output
    return Path(found.group(1))


def _processes_in(folder: Path) -> list[str]:
    """Processes whose working directory or command line names `folder`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if cwd.startswith(str(folder)) or str(folder) in cmdline:
            found.append(f"{entry.name}: {cmdline}")
    return found


def test_the_demo_delivers_every_example_and_leaves_nothing_behind(tmp_path: Path) -> None:
    state = ROOT / ".reconciler" / "state.db"
    before = state.stat().st_mtime_ns if state.exists() else None
    done = _demo(cwd=ROOT, tmp=tmp_path / "tmp")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "The receiver got 5 of 5 requests:" in out
    for path in (
        "POST /acme/slack-new-rule-violation",
        "POST /acme/slack-ri-deficit",
        "POST /acme/slack-ri-surplus",
        "GET /acme/status-board-get?",
        "POST /globex/finops-signed",
    ):
        assert path in out
    # The product page's body, rendered and sent as strict JSON.
    assert '"text":"nOps detected another New rule violation. The rule no-public-s3-buckets' in out
    assert "signature: valid" in out
    assert "INVALID" not in out
    assert out.rstrip().endswith("Done: 5 delivered; nothing left running.")
    scratch = _scratch(out)
    assert scratch.parent == tmp_path / "tmp"
    assert not scratch.exists()
    assert _processes_in(scratch) == []
    # The user's own state is not touched.
    assert (state.stat().st_mtime_ns if state.exists() else None) == before


def test_without_definitions_the_demo_delivers_the_init_example(tmp_path: Path) -> None:
    keep = tmp_path / "kept"
    done = _demo("--keep", str(keep), cwd=tmp_path, tmp=tmp_path / "tmp")
    assert done.returncode == 0, done.stderr
    assert "The receiver got 1 of 1 requests:" in done.stdout
    assert "POST /acme/slack-new-rule-violation" in done.stdout
    assert (keep / "state.db").is_file()
    assert (keep / "serve.log").is_file()
    assert not (tmp_path / ".reconciler").exists()
    assert _processes_in(keep) == []


def test_invalid_definitions_stop_the_demo_before_anything_starts(tmp_path: Path) -> None:
    folder = tmp_path / "webhooks.d" / "acme"
    folder.mkdir(parents=True)
    (folder / "hook.yaml").write_text("name: hook\nevent: nope\n", encoding="utf-8")
    done = _demo(cwd=tmp_path, tmp=tmp_path / "tmp")
    assert done.returncode == 1
    assert "error: the definitions in webhooks.d are not valid" in done.stderr
    assert "reconciler validate webhooks.d" in done.stderr
    assert "Dispatcher" not in done.stdout
    assert list((tmp_path / "tmp").iterdir()) == []
