"""Write the live state back out as definition files that plan as unchanged."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from reconciler.envaccess import SHARED_ENV_FILE
from reconciler.errors import ReconcilerError, StateError
from reconciler.loader import DEFAULT_ORGANIZATION, find_files
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


@dataclass
class ExportResult:
    """What an export wrote and removed, each path under its folder."""

    webhooks: list[Path] = field(default_factory=list)
    shared: Path | None = None
    removed: list[Path] = field(default_factory=list)

    @property
    def written(self) -> list[Path]:
        return ([self.shared] if self.shared else []) + self.webhooks

    def as_json(self, folder: Path) -> dict[str, Any]:
        def shown(path: Path) -> str:
            return str(path.relative_to(folder))

        return {
            "folder": str(folder),
            "webhooks": [shown(p) for p in self.webhooks],
            "shared_env": shown(self.shared) if self.shared else None,
            "removed": [shown(p) for p in self.removed],
        }


def export(
    webhooks: Iterable[LiveWebhook], folder: Path, shared_env: Mapping[str, str] | None = None
) -> list[Path]:
    """export_tree into a folder that holds no definitions yet; the paths written."""
    return export_tree(webhooks, folder, shared_env).written


def export_tree(
    webhooks: Iterable[LiveWebhook],
    folder: Path,
    shared_env: Mapping[str, str] | None = None,
    *,
    force: bool = False,
    organization: str | None = None,
) -> ExportResult:
    """One file per webhook, at folder/<organization>/<name>.yaml, and the shared list
    at folder/shared-env.yaml when one is given (None: not exported, as with --org).

    A folder that holds anything is refused unless `force`. With `force`, FOLDER is
    made to match the state: a webhook whose definition file is there already is
    rewritten at that file's path (its comments are not kept), the definition files
    of webhooks the state does not hold (within `organization` when given) are
    removed, and a shared list there is rewritten even when the state's is empty.

    The organization and name become a path, and they come from the state, which
    anyone with write access to its database can fill: each is checked as a name in
    a definition file is, and the path must stay inside folder. Every row, and every
    file already in folder, is checked before anything is written, so a refusal
    leaves nothing behind.
    """
    if folder.is_dir() and any(folder.iterdir()) and not force:
        raise ReconcilerError(
            f"{folder} is not empty; nothing was written (--force writes into it: each "
            "webhook's file is rewritten where it is, comments lost, and the definition "
            "files of webhooks not in the live state are removed)"
        )
    existing = _existing_definitions(folder, organization) if folder.is_dir() else {}
    targets = _targets(list(webhooks), folder, existing)
    kept = {path for _webhook, path in targets}
    result = ExportResult()
    result.removed = sorted(
        path for paths in existing.values() for path in paths if path not in kept
    )
    shared_target = folder / SHARED_ENV_FILE
    if shared_env is not None and (shared_env or shared_target.is_file()):
        text = yaml.dump(
            {"shared": dict(shared_env)}, Dumper=_Dumper, allow_unicode=True, width=100
        )
        _write(shared_target, text)
        result.shared = shared_target
    for webhook, target in targets:
        _write(target, definition_yaml(webhook.spec_dict()))
        result.webhooks.append(target)
    for path in result.removed:
        try:
            path.unlink()
        except OSError as exc:
            raise ReconcilerError(f"cannot remove {path}: {exc.strerror}") from None
    return result


def _write(target: Path, text: str) -> None:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ReconcilerError(f"cannot write {target}: {exc.strerror}") from None


def _existing_definitions(
    folder: Path, organization: str | None
) -> dict[tuple[str, str], list[Path]]:
    """The definition files in folder, by the (organization, name) each declares, in
    file order; a YAML file that names no webhook is refused, naming it, since
    export could neither keep nor replace it."""
    found: dict[tuple[str, str], list[Path]] = {}
    unreadable: list[str] = []
    for file in find_files(folder):
        parts = file.relative_to(folder).parts
        if parts == (SHARED_ENV_FILE,):
            continue
        try:
            data = yaml.safe_load(file.read_text(encoding="utf-8"))
        except (OSError, ValueError, yaml.YAMLError):
            data = None
        name = data.get("name") if isinstance(data, dict) else None
        if not isinstance(name, str):
            unreadable.append(str(file))
            continue
        declared = data.get("organization") if isinstance(data, dict) else None
        folder_org = parts[0] if len(parts) > 1 else None
        owner = declared if isinstance(declared, str) else folder_org or DEFAULT_ORGANIZATION
        if organization is None or owner == organization:
            found.setdefault((owner, name), []).append(file)
    if unreadable:
        raise ReconcilerError(
            "cannot export over files that hold no webhook definition (a mapping with a "
            f"name): {', '.join(unreadable)}; nothing was written"
        )
    return found


def _targets(
    webhooks: list[LiveWebhook],
    folder: Path,
    existing: Mapping[tuple[str, str], list[Path]],
) -> list[tuple[LiveWebhook, Path]]:
    inside = folder.resolve()
    targets: list[tuple[LiveWebhook, Path]] = []
    refused: list[str] = []
    # A webhook keeps the first file that holds it; a new one's default path may be
    # another live webhook's file (renamed): then it takes the next free name.
    live = {w.key for w in webhooks}
    taken = {paths[0] for key, paths in existing.items() if key in live}
    for webhook in webhooks:
        held = existing.get((webhook.organization, webhook.name))
        target = held[0] if held else _free(folder / webhook.organization, webhook.name, taken)
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


def _free(folder: Path, name: str, taken: set[Path]) -> Path:
    target = folder / f"{name}.yaml"
    number = 2
    while target in taken:
        target = folder / f"{name}-{number}.yaml"
        number += 1
    taken.add(target)
    return target


def _row(webhook: LiveWebhook) -> str:
    return f"the webhook row organization={webhook.organization!r} name={webhook.name!r}"
