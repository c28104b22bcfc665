"""Write the live state back out as definition files that plan as unchanged."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from reconciler.envaccess import SHARED_ENV_FILE
from reconciler.errors import ReconcilerError
from reconciler.model import WebhookSpec
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
    at folder/shared-env.yaml when one is given and not empty; returns the paths."""
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
    for webhook in webhooks:
        target = folder / webhook.organization / f"{webhook.name}.yaml"
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(definition_yaml(webhook.spec_dict()), encoding="utf-8")
        except OSError as exc:
            raise ReconcilerError(f"cannot write {target}: {exc.strerror}") from None
        written.append(target)
    return written
