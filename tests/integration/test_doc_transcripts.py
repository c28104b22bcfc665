"""Every console transcript in README.md and docs/*.md runs here, so it cannot drift.

A transcript is a ```console block: `$ ` lines are commands (a line ending in `\\`
and a here-document continue the command), every other line is output. The
HTML comment just before the block says how to set up its sandbox, a fresh
temporary folder:

    <!-- transcript: examples git -->

These steps run in the order written:

- `empty`: nothing (the folder stays empty);
- `examples`: a copy of this repository's webhooks.d/;
- `init=ORG`: `reconciler init . --org ORG --admins @acme-corp/webhook-admins`;
- `files=DIR`: the contents of DIR (a folder of this repository) copied in;
- `git`: the folder made a git repository (once), its files committed;
- `apply`: the definitions applied to a new state (`--actor alice`).

and these set the block up:

- `receiver`: a local HTTP receiver started, its URL in `$RECEIVER`: `/ok`
  answers 200, `/fail` 500 and `/gone` 410;
- `port=N`: the port the transcript's `reconciler serve` listens on; the test
  runs it on a free loopback port and shows that one as N;
- `continue`: the block goes on in the sandbox and shell of the block before it
  (in the same file), after that block's commands;
- `any-order`: each command's output lines may come in any order (deliveries
  made in the same millisecond).

The commands of a sandbox run in one bash shell, with the installed
`reconciler` on PATH, no colour and no state variable. A command ending in ` &`
(a server) runs in the background: the test waits until it answers `/healthz`
and shows its first line of output; it is stopped when the sandbox ends.

Output is compared line by line. Volatile parts are written as placeholders:
`<time>` an ISO 8601 UTC time, `<id>` a word of letters, digits and `_`, `<hex>`
hexadecimal digits, `<n>` a number, `<...>` anything up to the end of the part;
a line `...` stands for any number of lines. A block whose output cannot be
shown this way is a ```sh block of commands alone.
"""

from __future__ import annotations

import difflib
import http.server
import re
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.helpers_state import REPO, cli_env

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
BIN = Path(sys.executable).parent
MARKER = re.compile(r"<!--\s*transcript:(.*?)-->")
FENCE = re.compile(r"^(\s*)(`{3,})(\S*)\s*$")
SEPARATOR = "\x1e"
TIMEOUT = 300  # a whole session, on a loaded machine

PLACEHOLDERS = {
    "<time>": r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z",
    "<id>": r"[A-Za-z0-9_]+",
    "<hex>": r"[0-9a-f]+",
    "<n>": r"\d+(?:\.\d+)?",
    "<...>": r".*?",
}
_PLACEHOLDER = re.compile("|".join(re.escape(p) for p in PLACEHOLDERS))


@dataclass
class Command:
    text: str  # as written, `$ ` removed, continuation lines included
    expected: list[str]  # the output lines written under it
    line: int  # where it is written


@dataclass
class Block:
    page: Path
    line: int
    options: dict[str, str]
    commands: list[Command]

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"


@dataclass
class Session:
    """The blocks that share one sandbox: one block and those that continue it."""

    blocks: list[Block] = field(default_factory=list)

    @property
    def options(self) -> dict[str, str]:
        """The first block's steps, with the `port` and `receiver` of any block."""
        merged = dict(self.blocks[0].options)
        for block in self.blocks[1:]:
            merged.update({k: v for k, v in block.options.items() if k in ("port", "receiver")})
        return merged

    @property
    def name(self) -> str:
        return self.blocks[0].where


def _options(comment: str) -> dict[str, str]:
    options: dict[str, str] = {}
    for word in comment.split():
        key, _, value = word.partition("=")
        options[key] = value
    return options


def _commands(body: list[str], first_line: int) -> list[Command]:
    commands: list[Command] = []
    lines = iter(enumerate(body, first_line))
    for number, line in lines:
        if line.startswith("$ "):
            text = line[2:]
            heredoc = re.search(r"<<-?'?(\w+)'?", text)
            while text.endswith("\\"):
                _, more = next(lines)
                text += "\n" + more
            if heredoc:
                for _, more in lines:
                    text += "\n" + more
                    if more == heredoc.group(1):
                        break
            commands.append(Command(text, [], number))
        else:
            assert commands, f"output before any command at line {number}"
            commands[-1].expected.append(line)
    return commands


@dataclass
class Fenced:
    page: Path
    line: int  # of the opening fence
    language: str
    body: list[str]  # its lines, the fence's indentation removed
    before: str  # the line before the fence


def fenced(page: Path) -> Iterator[Fenced]:
    """Every fenced code block of a page."""
    lines = page.read_text(encoding="utf-8").splitlines()
    number = 0
    while number < len(lines):
        fence = FENCE.match(lines[number])
        if not fence:
            number += 1
            continue
        indent, ticks, language = fence.groups()
        start = number
        number += 1
        body: list[str] = []
        while lines[number].strip() != ticks:
            body.append(lines[number].removeprefix(indent))
            number += 1
        number += 1
        yield Fenced(page, start + 1, language, body, lines[start - 1] if start else "")


PROBLEMS: list[str] = []  # transcripts that cannot run as written


def sessions() -> list[Session]:
    """The ```console blocks of every page, grouped by sandbox."""
    found: list[Session] = []
    for page in PAGES:
        for block in fenced(page):
            if block.language != "console":
                continue
            where = f"{page.relative_to(REPO)}:{block.line}"
            comment = MARKER.search(block.before)
            if not comment:
                PROBLEMS.append(f"{where}: a console block needs a <!-- transcript: --> line")
                continue
            try:
                commands = _commands(block.body, block.line + 1)
            except AssertionError as error:
                PROBLEMS.append(f"{where}: {error}")
                continue
            parsed = Block(page, block.line, _options(comment.group(1)), commands)
            if "continue" not in parsed.options:
                found.append(Session([parsed]))
            elif found and found[-1].blocks[0].page == page:
                found[-1].blocks.append(parsed)
            else:
                PROBLEMS.append(f"{where}: `continue` needs a transcript before it on the page")
    return found


# -- running -----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class _Receiver(http.server.BaseHTTPRequestHandler):
    """Answers 200 at /ok, 500 at /fail and 410 at /gone, with the body `ok`."""

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        status = {"/ok": 200, "/fail": 500, "/gone": 410}.get(self.path.split("?")[0], 404)
        self.send_response(status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


def _script(session: Session, port: str, real_port: int) -> str:
    """One bash script for the whole session: each command after a separator."""
    lines = [
        "exec 2>&1",
        "__rc=0",
        # Waits until the server answers /healthz and has printed its first line.
        "__ready() { for _ in $(seq 600); do "
        '[ -s "$2" ] && curl -s -o /dev/null "http://127.0.0.1:$1/healthz" && return 0; '
        "sleep 0.1; done; echo 'the server did not answer /healthz'; }",
        "trap 'kill $(jobs -p) 2>/dev/null; wait' EXIT",
    ]
    index = 0
    for block in session.blocks:
        for command in block.commands:
            text = command.text.replace(port, str(real_port)) if port else command.text
            if text.endswith(" &"):
                log = f".server-{index}.log"
                text = f"{text[:-2]} > {log} 2>&1 &\n__ready {real_port} {log}; head -n 1 {log}"
            lines.append(f"__rc=$?; printf '{SEPARATOR}%s\\n' {index}; (exit $__rc)")
            lines.append(text)
            index += 1
    lines.append(f"printf '{SEPARATOR}end\\n'")
    return "\n".join(lines) + "\n"


def _environment(sandbox: Path, receiver: str | None) -> dict[str, str]:
    env = cli_env(
        PATH=f"{BIN}:/usr/local/bin:/usr/bin:/bin",
        HOME=str(sandbox),
        NO_COLOR="1",
        PYTHONUNBUFFERED="1",
        TZ="UTC",
        LC_ALL="C.UTF-8",
        COLUMNS="100",
        GIT_AUTHOR_NAME="alice",
        GIT_AUTHOR_EMAIL="alice@example.com",
        GIT_COMMITTER_NAME="alice",
        GIT_COMMITTER_EMAIL="alice@example.com",
        GIT_CONFIG_GLOBAL="/dev/null",
        GIT_CONFIG_NOSYSTEM="1",
        GIT_CONFIG_COUNT="1",
        GIT_CONFIG_KEY_0="init.defaultBranch",
        GIT_CONFIG_VALUE_0="main",
    )
    for name in list(env):
        if name.startswith(("ACME_", "GLOBEX_", "RECONCILER_")):
            del env[name]
    if receiver:
        env["RECEIVER"] = receiver
    return env


def _prepare(sandbox: Path, options: dict[str, str]) -> None:
    env = _environment(sandbox, None)

    def run(*command: str) -> None:
        done = subprocess.run(
            command, cwd=sandbox, env=env, capture_output=True, text=True, timeout=TIMEOUT
        )
        assert done.returncode == 0, f"{' '.join(command)}: {done.stdout}{done.stderr}"

    for step, value in options.items():
        if step == "examples":
            shutil.copytree(REPO / "webhooks.d", sandbox / "webhooks.d")
        elif step == "init":
            run("reconciler", "init", ".", "--org", value, "--admins", "@acme-corp/webhook-admins")
        elif step == "files":
            shutil.copytree(REPO / value, sandbox, dirs_exist_ok=True)
        elif step == "git":
            if not (sandbox / ".git").exists():
                run("git", "init", "-q")
            run("git", "add", ".")
            run("git", "commit", "-qm", "webhook definitions")
        elif step == "apply":
            run("reconciler", "apply", "--auto-approve", "--actor", "alice")
        else:
            assert step in ("empty", "receiver", "port", "any-order", "continue"), step


def _pattern(expected: list[str]) -> re.Pattern[str]:
    parts: list[str] = []
    for line in expected:
        if line == "...":
            parts.append(r"(?:[^\n]*\n)*?")
            continue
        pieces = _PLACEHOLDER.split(line)
        holders = _PLACEHOLDER.findall(line)
        regex = re.escape(pieces[0])
        for holder, piece in zip(holders, pieces[1:], strict=True):
            regex += PLACEHOLDERS[holder] + re.escape(piece)
        parts.append(regex + r"\n")
    return re.compile("".join(parts))


def _matches(expected: list[str], actual: str, any_order: bool) -> bool:
    if not any_order:
        return _pattern(expected).fullmatch(actual) is not None
    left = actual.splitlines()
    if len(left) != len(expected):
        return False
    for line in expected:
        pattern = _pattern([line])
        found = next((a for a in left if pattern.fullmatch(a + "\n")), None)
        if found is None:
            return False
        left.remove(found)
    return True


def _outputs(output: str) -> dict[str, str]:
    chunks = output.split(SEPARATOR)
    found: dict[str, str] = {}
    for chunk in chunks[1:]:
        key, _, text = chunk.partition("\n")
        found[key] = text
    return found


def run_session(session: Session, sandbox: Path) -> list[str]:
    """Runs the session; returns one message per command whose output differs."""
    options = session.options
    _prepare(sandbox, session.blocks[0].options)
    receiver: http.server.ThreadingHTTPServer | None = None
    url = None
    if "receiver" in options:
        receiver = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
        threading.Thread(target=receiver.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{receiver.server_address[1]}"
    port = options.get("port", "")
    real_port = _free_port() if port else 0
    try:
        completed = subprocess.run(
            ["bash", "-c", _script(session, port, real_port)],
            cwd=sandbox,
            env=_environment(sandbox, url),
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
    finally:
        if receiver:
            receiver.shutdown()
            receiver.server_close()
    outputs = _outputs(completed.stdout)
    assert "end" in outputs, f"{session.name}: the script stopped early:\n{completed.stdout}"
    failures: list[str] = []
    index = 0
    for block in session.blocks:
        for command in block.commands:
            actual = outputs[str(index)]
            if port:
                actual = actual.replace(str(real_port), port)
            actual = actual.rstrip("\n")
            actual = actual + "\n" if actual else ""
            if not _matches(command.expected, actual, "any-order" in block.options):
                diff = "\n".join(
                    difflib.unified_diff(
                        command.expected, actual.splitlines(), "written", "printed", lineterm=""
                    )
                )
                where = f"{block.page.relative_to(REPO)}:{command.line}"
                failures.append(f"{where}: $ {command.text}\n{diff}")
            index += 1
    return failures


SESSIONS = sessions()


@pytest.fixture(scope="module")
def transcripts(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, list[str]]:
    """Runs the selected sessions side by side (each is mostly waiting on its
    processes) and gives each one's failures by name."""
    selected = [
        item.callspec.params["session"]
        for item in request.session.items
        if isinstance(item, pytest.Function)
        and item.originalname == "test_transcript_prints_what_the_page_shows"
    ]

    def run(session: Session) -> list[str]:
        sandbox = tmp_path_factory.mktemp("transcript") / "sandbox"
        sandbox.mkdir()
        try:
            return run_session(session, sandbox)
        except (AssertionError, subprocess.SubprocessError) as error:
            return [f"{session.name}: {error}"]

    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip([s.name for s in selected], pool.map(run, selected), strict=True))


@pytest.mark.parametrize("session", SESSIONS, ids=[s.name for s in SESSIONS])
def test_transcript_prints_what_the_page_shows(
    session: Session, transcripts: dict[str, list[str]]
) -> None:
    failures = transcripts[session.name]
    assert not failures, "\n\n".join(failures)


def test_every_transcript_is_a_console_block() -> None:
    """A block that shows a `$ ` command with output must be ```console, so it runs;
    commands shown alone are ```sh."""
    for page in PAGES:
        for block in fenced(page):
            if block.language in ("console", "sh", "bash"):
                continue
            assert not any(line.lstrip().startswith("$ ") for line in block.body), (
                f"{page.relative_to(REPO)}:{block.line}: a transcript in a "
                f"```{block.language} block: make it ```console with a <!-- transcript: --> "
                "line, or ```sh without output"
            )


def test_every_console_block_can_run() -> None:
    assert not PROBLEMS, "\n".join(PROBLEMS)


def test_there_are_transcripts_and_each_has_commands() -> None:
    assert SESSIONS, "no ```console block found"
    for session in SESSIONS:
        for block in session.blocks:
            assert block.commands, f"{block.where}: a console block without a `$ ` command"


def test_the_runner_compares_with_placeholders() -> None:
    pattern = _pattern(["event acme/<id>: 2 deliveries queued", "...", "took <n> ms at <time>"])
    assert pattern.fullmatch(
        "event acme/evt_1f: 2 deliveries queued\nx\ny\ntook 2.5 ms at 2026-01-02T03:04:05Z\n"
    )
    assert not pattern.fullmatch("event acme/evt_1f: 3 deliveries queued\ntook 2 ms at now\n")


def test_the_tools_the_transcripts_use_are_installed() -> None:
    for tool in ("bash", "git", "curl"):
        assert shutil.which(tool), (
            f"the doc transcripts run {tool}: install it (apt-get install {tool})"
        )
