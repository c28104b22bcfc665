"""The command line: a thin adapter over the library.

Each command parses options, calls one library function and prints its result.
Expected failures (ReconcilerError) become one line on stderr and exit 1; click
turns usage errors into exit 2. The commands live one group a module beside this
one and are registered on the `reconciler` group here.
"""

from __future__ import annotations

from typing import Any

import click

from reconciler import __version__
from reconciler.cli import (
    definitions,
    deliveries,
    demo,
    dispatcher,
    retention,
    state,
    tokens,
    webhooks,
)
from reconciler.errors import ReconcilerError


class _Group(click.Group):
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


for command in (
    definitions.validate,
    definitions.schema,
    definitions.render,
    definitions.init,
    state.plan,
    state.apply,
    state.history,
    state.export,
    state.migrate,
    dispatcher.serve_command,
    dispatcher.fire,
    demo.demo,
    deliveries.deliveries,
    retention.retention,
    tokens.tokens,
    webhooks.webhooks,
):
    cli.add_command(command)


def main() -> None:
    cli(prog_name="reconciler")
