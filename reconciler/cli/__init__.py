"""The command line, `reconciler`: group.py holds the group and registers the
commands, each group of them in a module of its own (definitions, state,
dispatcher, deliveries, tokens, webhooks), over what common.py shares."""

from __future__ import annotations

from reconciler.cli.group import cli, main

__all__ = ["cli", "main"]
