"""Load a definitions folder: every file read, every problem collected.

A bad file never hides another: the result carries the definitions that are
valid and the problems of all the others, each at `path:line:col`.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from reconciler.checks import Loc, check_spec, dotted
from reconciler.model import NAME_RULE, RetryPolicy, WebhookSpec
from reconciler.problems import Location, Problem
from reconciler.yamlsource import YamlDocument, load_document

DEFAULT_ORGANIZATION = "default"
SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class Definition:
    spec: WebhookSpec
    path: str
    name_at: Location


@dataclass
class LoadResult:
    definitions: list[Definition] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    files: int = 0

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors


def find_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    # rglob yields path's own parts followed by the relative ones: slicing them off is
    # p.relative_to(path).parts without its cost.
    skip = len(path.parts)
    return sorted(
        p
        for p in path.rglob("*")
        if p.suffix in SUFFIXES
        and p.is_file()
        and not any(part.startswith(".") for part in p.parts[skip:])
    )


def definitions_root(path: Path) -> Path:
    """The folder organizations are named under: the nearest `webhooks.d` at or above
    PATH; else PATH itself when it is a folder, or a file's folder."""
    absolute = path.absolute()
    for candidate in (absolute, *absolute.parents):
        if candidate.name == "webhooks.d":
            return path if candidate == absolute else candidate
    return path if path.is_dir() else path.parent


def load_definitions(path: Path, *, check_env: bool = False) -> LoadResult:
    return load_paths([path], check_env=check_env)


def load_paths(paths: Iterable[Path], *, check_env: bool = False) -> LoadResult:
    """Load several folders or files as one set of definitions (as pre-commit passes
    the files it checks): a file named twice is read once, and names must be unique
    across all of them."""
    result = LoadResult()
    given = list(paths)
    # One folder holds each file once; only several paths can name a file twice.
    seen: set[Path] | None = set() if len(given) > 1 else None
    for path in given:
        if path.exists():
            _load_path(result, path, seen, check_env)
    result.problems.extend(_duplicate_names(result.definitions))
    result.problems.sort(key=lambda p: (p.location.path, p.location.line, p.location.col))
    return result


def _load_path(result: LoadResult, path: Path, seen: set[Path] | None, check_env: bool) -> None:
    root = definitions_root(path)
    cwd: Path | None = None
    # What _display and _folder_organization give depends on a file's folder only:
    # worked out for the first file of each folder, then reused.
    folders: dict[str, tuple[str, int, str | None]] = {}
    for file in find_files(path):
        if seen is not None:
            key = file.resolve()
            if key in seen:
                continue
            seen.add(key)
        result.files += 1
        name = file.name
        text = str(file)
        folder = text[: len(text) - len(name)]  # the same for every file of a folder
        known = folders.get(folder)
        if known is None:
            if cwd is None:
                cwd = Path.cwd()
            shown = _display(file, cwd)
            known = folders[folder] = (shown, len(name), _folder_organization(file, root))
        else:
            shown = known[0][: len(known[0]) - known[1]] + name
        try:
            raw = file.read_bytes()
        except OSError as exc:
            result.problems.append(Problem(Location(shown, 1, 1), f"cannot read: {exc.strerror}"))
            continue
        definition, problems = load_one(shown, raw, known[2], check_env=check_env)
        result.problems.extend(problems)
        if definition is not None:
            result.definitions.append(definition)


def load_one(
    path: str, raw: bytes, folder_org: str | None, *, check_env: bool = False
) -> tuple[Definition | None, list[Problem]]:
    doc = load_document(path, raw)
    if isinstance(doc, Problem):
        return None, [doc]
    data = doc.data
    if not isinstance(data, dict):
        kind = _kind(data)
        return None, [
            Problem(
                doc.locate(()),
                f"expected a mapping of fields (name, event, method, url, ...), got {kind}",
            )
        ]
    problems: list[Problem] = []
    declared = data.get("organization")
    if folder_org and isinstance(declared, str) and declared != folder_org:
        problems.append(
            Problem(
                doc.locate(("organization",)),
                f"organization: '{declared}' contradicts its folder '{folder_org}'; "
                "move the file or drop the key",
            )
        )
    if declared is None:
        data = {**data, "organization": folder_org or DEFAULT_ORGANIZATION}
    try:
        spec = WebhookSpec.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        problems += [_problem(doc, *describe(error, data)) for error in errors]
        problems += _rule_problems_despite(doc, data, errors, check_env)
        return None, problems
    problems += _rule_problems(doc, spec, check_env, skip=())
    if any(p.severity == "error" for p in problems):
        return None, problems
    return Definition(spec, path, doc.locate(("name",))), problems


# Harmless values for required fields that are missing or wrong, so the rules can
# still look at the fields that are right.
_STAND_INS: dict[str, str] = {
    "name": "stand-in",
    "event": "new_rule_violation",
    "method": "POST",
    "url": "https://stand-in.invalid/",
}


def _rule_problems_despite(
    doc: YamlDocument, data: dict[str, Any], errors: list[ErrorDetails], check_env: bool
) -> list[Problem]:
    """The whole-definition rules, run on the fields that passed the model, so a
    wrong type in one field does not hide a rule broken in another."""
    broken = {error["loc"][0] for error in errors if error["loc"]}
    partial = {key: value for key, value in data.items() if key not in broken}
    stand_ins = {key: value for key, value in _STAND_INS.items() if key not in partial}
    try:
        spec = WebhookSpec.model_validate({**partial, **stand_ins})
    except ValidationError:
        return []
    return _rule_problems(doc, spec, check_env, skip=tuple(stand_ins))


def _rule_problems(
    doc: YamlDocument, spec: WebhookSpec, check_env: bool, skip: tuple[str, ...]
) -> list[Problem]:
    return [
        Problem(doc.locate(f.loc, key=f.at_key), f.message, f.severity)
        for f in check_spec(spec, check_env=check_env)
        if f.loc[0] not in skip
    ]


def _problem(doc: YamlDocument, loc: Loc, message: str, at_key: bool) -> Problem:
    return Problem(doc.locate(loc, key=at_key), message)


def describe(error: ErrorDetails, data: dict[str, Any]) -> tuple[Loc, str, bool]:
    """A pydantic error as (where, one readable sentence, whether to point at the key)."""
    loc: Loc = tuple(error["loc"])
    where = dotted(loc)
    kind = error["type"]
    value = error.get("input")
    ctx = error.get("ctx") or {}
    if kind == "missing":
        return loc, f"missing required field '{loc[-1]}'", False
    if kind == "extra_forbidden":
        return loc, _unknown_field(loc), True
    if kind == "enum":
        expected = ctx.get("expected", "").replace("'", "").replace(" or ", ", ")
        return loc, f"{where}: {value!r} is not one of: {expected}", False
    if kind == "string_pattern_mismatch":
        field_name = next((p for p in reversed(loc) if isinstance(p, str)), "")
        if field_name in ("name", "organization"):
            return loc, f"{where}: {value!r} is not a valid name ({NAME_RULE})", False
        if field_name == "rate_limit":
            return loc, f"{where}: {value!r} is not a rate (use e.g. 1/s, 20/m, 100/h)", False
        return loc, f"{where}: {value!r} is not a duration (use e.g. 500ms, 15s, 5m, 2h)", False
    if kind in ("string_type", "str_type"):
        if "timeout" in loc or "schedule" in loc:
            return loc, f"{where}: expected a duration such as 15s, got {_kind(value)}", False
        hint = " (quote it in YAML)" if isinstance(value, int | float | bool) else ""
        return loc, f"{where}: expected text, got {_kind(value)}{hint}", False
    if kind == "bool_type":
        return loc, f"{where}: expected true or false, got {_kind(value)}", False
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return loc, f"{where}: expected a mapping, got {_kind(value)}", False
    if kind == "list_type":
        return loc, f"{where}: expected a list, got {_kind(value)}", False
    if kind in _BOUNDS:
        words, key = _BOUNDS[kind]
        bound = ctx.get(key)
        shown = f"{bound:g}" if isinstance(bound, int | float) else bound
        return loc, f"{where}: must be {words} {shown}, got {_kind(value)}", False
    if kind == "too_long":
        return loc, f"{where}: at most {ctx.get('max_length')} items", False
    if kind == "value_error":
        return loc, f"{where}: {ctx.get('error', error['msg'])}", False
    return loc, f"{where}: {error['msg']}", False


_BOUNDS = {
    "less_than_equal": ("at most", "le"),
    "less_than": ("less than", "lt"),
    "greater_than_equal": ("at least", "ge"),
    "greater_than": ("more than", "gt"),
}


def _kind(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int | float):
        return f"number {value}"
    if isinstance(value, str):
        return f"text {value!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _unknown_field(loc: Loc) -> str:
    key = str(loc[-1])
    model = RetryPolicy if loc[:1] == ("retry",) else WebhookSpec
    known = list(model.model_fields)
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f" (did you mean '{close[0]}'?)" if close else f" (known: {', '.join(known)})"
    prefix = f"{dotted(loc[:-1])}: " if len(loc) > 1 else ""
    return f"{prefix}unknown field '{key}'{hint}"


def _duplicate_names(definitions: Iterable[Definition]) -> list[Problem]:
    first: dict[tuple[str, str], Definition] = {}
    problems = []
    for definition in definitions:
        key = definition.spec.key
        if key in first:
            other = first[key]
            problems.append(
                Problem(
                    definition.name_at,
                    f"name: '{key[1]}' is already used in organization '{key[0]}' "
                    f"at {other.name_at}",
                )
            )
        else:
            first[key] = definition
    return problems


def _folder_organization(file: Path, root: Path) -> str | None:
    parts = file.absolute().relative_to(root.absolute()).parts
    return parts[0] if len(parts) > 1 else None


def _display(file: Path, cwd: Path | None = None) -> str:
    try:
        return str(file.relative_to(Path.cwd() if cwd is None else cwd))
    except ValueError:
        return str(file)
