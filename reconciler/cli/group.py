"""The command line: a thin adapter over the library.

Each command parses options, calls one library function and prints its result.
Expected failures (ReconcilerError) become one line on stderr and exit 1; click
turns usage errors into exit 2. The commands live one group a module beside this
one and are registered on the `reconciler` group here.
"""

from __future__ import annotations

import importlib
from typing import Any

import click

from reconciler import __version__
from reconciler.errors import ReconcilerError

# Each command, by the module and attribute that define it. A command's module is
# imported when the command runs (or --help lists it), so `reconciler validate` does
# not pay for the dispatcher's, the plan's or the HTTP client's imports: the CLI
# starts in about half the time, which a pre-commit hook and CI feel on every run.
COMMANDS: dict[str, str] = {
    "validate": "reconciler.cli.definitions:validate",
    "schema": "reconciler.cli.definitions:schema",
    "render": "reconciler.cli.definitions:render",
    "init": "reconciler.cli.definitions:init",
    "plan": "reconciler.cli.state:plan",
    "apply": "reconciler.cli.state:apply",
    "history": "reconciler.cli.state:history",
    "export": "reconciler.cli.state:export",
    "migrate": "reconciler.cli.state:migrate",
    "serve": "reconciler.cli.dispatcher:serve_command",
    "fire": "reconciler.cli.dispatcher:fire",
    "demo": "reconciler.cli.demo:demo",
    "deliveries": "reconciler.cli.deliveries:deliveries",
    "retention": "reconciler.cli.retention:retention",
    "tokens": "reconciler.cli.tokens:tokens",
    "webhooks": "reconciler.cli.webhooks:webhooks",
}


class _Group(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return super().get_command(ctx, cmd_name)
        module, _, attribute = target.partition(":")
        command = getattr(importlib.import_module(module), attribute)
        if not isinstance(command, click.Command) or command.name != cmd_name:
            raise RuntimeError(f"{target} is not the {cmd_name!r} command")
        return command

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ReconcilerError as exc:
            message = str(exc)
            if message:
                click.echo(f"error: {message}", err=True)
            ctx.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="reconciler")
def cli() -> None:
    """GitOps for outgoing webhooks.

    Webhook definitions live as YAML files in webhooks.d/; reconciler validates
    them, plans the difference against the live state and applies it.

    \b
    Example:
      reconciler validate webhooks.d
    """


def main() -> None:
    cli(prog_name="reconciler")
