"""The CLI's commands are loaded when used: each one registered resolves to itself,
and a command imports only what it needs (validate neither the dispatcher nor the
plan's diff library)."""

from __future__ import annotations

import subprocess
import sys

import click

from reconciler.cli.group import COMMANDS, cli


def test_every_registered_command_resolves_to_the_command_of_that_name() -> None:
    ctx = click.Context(cli)
    for name in COMMANDS:
        command = cli.get_command(ctx, name)
        assert isinstance(command, click.Command)
        assert command.name == name
        assert command.help and "Example" in command.help
    assert set(COMMANDS) <= set(cli.list_commands(ctx))


def test_validate_does_not_import_the_dispatcher_or_the_diff_library() -> None:
    script = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from reconciler.cli import cli\n"
        "result = CliRunner().invoke(cli, ['validate', 'webhooks.d'])\n"
        "assert result.exit_code == 0, result.output\n"
        "heavy = sorted(m for m in sys.modules if m.startswith(('reconciler.dispatch', "
        "'deepdiff', 'fastapi', 'uvicorn', 'aiohttp', 'httpx')))\n"
        "print(heavy)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
