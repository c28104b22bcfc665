"""Write the live state back out as definition files that plan as unchanged."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from reconciler.envaccess import SHARED_ENV_FILE
from reconciler.errors import ReconcilerError, StateError
from reconciler.model import NAME_PATTERN, NAME_RULE, WebhookSpec
from reconciler.store.base import LiveWebhook

_FIELD_ORDER = list(WebhookSpec.model_fields)


class _Dumper(yaml.SafeDumper):
    pass


_YAML_LINE_BREAKS = ("\x85", "\u2028", "\u2029")


def _str_representer(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    # Characters YAML reads as line breaks survive only in double quotes.
    if any(c in value for c in _YAML_LINE_BREAKS):
        style: str | None = '"'
    elif "\n" in value:
        style = "|"
    else:
        style = None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str_representer)


def definition_yaml(spec: dict[str, Any]) -> str:
    ordered = {key: spec[key] for key in _FIELD_ORDER if key in spec}
    if isinstance(ordered.get("body"), str):
        # A string body reads back as JSON text, so write it as JSON text.
        ordered["body"] = json.dumps(ordered["body"], ensure_ascii=False)
    text = yaml.dump(ordered, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)
    return text


def export(
    webhooks: Iterable[LiveWebhook], folder: Path, shared_env: Mapping[str, str] | None = None
) -> list[Path]:
    """One file per webhook, at folder/<organization>/<name>.yaml, and the shared list
    at folder/shared-env.yaml when one is given and not empty; returns the paths.

    The organization and name become a path, and they come from the state, which
    anyone with write access to its database can fill: each is checked as a name in
    a definition file is, and the path must stay inside folder. Every row is
    checked before anything is written, so a bad one leaves nothing behind.
    """
    targets = _targets(list(webhooks), folder)
    written = []
    if shared_env:
        target = folder / SHARED_ENV_FILE
        text = yaml.dump(
            {"shared": dict(shared_env)}, Dumper=_Dumper, allow_unicode=True, width=100
        )
        try:
            folder.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise ReconcilerError(f"cannot write {target}: {exc.strerror}") from None
        written.append(target)
    for webhook, target in targets:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(definition_yaml(webhook.spec_dict()), encoding="utf-8")
        except OSError as exc:
            raise ReconcilerError(f"cannot write {target}: {exc.strerror}") from None
        written.append(target)
    return written


def _targets(webhooks: list[LiveWebhook], folder: Path) -> list[tuple[LiveWebhook, Path]]:
    inside = folder.resolve()
    targets: list[tuple[LiveWebhook, Path]] = []
    refused: list[str] = []
    for webhook in webhooks:
        target = folder / webhook.organization / f"{webhook.name}.yaml"
        bad = [
            field
            for field, value in (("organization", webhook.organization), ("name", webhook.name))
            if not re.fullmatch(NAME_PATTERN, value)
        ]
        if bad:
            verb = "is" if len(bad) == 1 else "are"
            refused.append(
                f"{_row(webhook)}: its {' and '.join(bad)} {verb} not valid ({NAME_RULE})"
            )
        elif not target.resolve().is_relative_to(inside):
            refused.append(f"{_row(webhook)}: {target} leads outside {folder}")
        else:
            targets.append((webhook, target))
    if refused:
        raise StateError(
            "cannot export: the live state holds " + "; ".join(refused) + "; nothing was written"
        )
    return targets


def _row(webhook: LiveWebhook) -> str:
    return f"the webhook row organization={webhook.organization!r} name={webhook.name!r}"
