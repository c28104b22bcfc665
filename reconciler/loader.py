"""Load a definitions folder: every file read, every problem collected.

A bad file never hides another: the result carries the definitions that are
valid and the problems of all the others, each at `path:line:col`.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from reconciler import envaccess
from reconciler.checks import Loc, check_spec, dotted, env_references
from reconciler.model import NAME_PATTERN, NAME_RULE, RetryPolicy, WebhookSpec
from reconciler.problems import Location, Problem
from reconciler.yamlsource import YamlDocument, load_document

DEFAULT_ORGANIZATION = "default"
SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class Definition:
    spec: WebhookSpec
    path: str
    name_at: Location


@dataclass(frozen=True)
class EnvReference:
    """A `${env:NAME}` as written in a definition, to check once every organization
    is known."""

    organization: str
    name: str
    loc: Loc
    at: Location


@dataclass
class LoadResult:
    definitions: list[Definition] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    files: int = 0
    # The shared list (webhooks.d/shared-env.yaml): variable name -> reason. Empty
    # when the file is absent, which shares nothing.
    shared_env: dict[str, str] = field(default_factory=dict)
    # The organization folders under each definitions root, each with where.
    organizations: dict[str, Location] = field(default_factory=dict)
    env_references: list[EnvReference] = field(default_factory=list)
    shared_env_file: str = envaccess.SHARED_ENV_SHOWN
    _shared_at: dict[str, Location] = field(default_factory=dict)
    _roots: set[Path] = field(default_factory=set)

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
    result.problems.extend(_env_access_problems(result))
    result.problems.sort(key=lambda p: (p.location.path, p.location.line, p.location.col))
    return result


def _load_path(result: LoadResult, path: Path, seen: set[Path] | None, check_env: bool) -> None:
    root = definitions_root(path)
    _read_root(result, root)
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
        name = file.name
        if name == envaccess.SHARED_ENV_FILE and file.parent.absolute() == root.absolute():
            continue  # the shared list, read by _read_root: not a definition
        result.files += 1
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
        definition, problems = load_one(
            shown, raw, known[2], check_env=check_env, refs=result.env_references
        )
        result.problems.extend(problems)
        if definition is not None:
            result.definitions.append(definition)


def load_one(
    path: str,
    raw: bytes,
    folder_org: str | None,
    *,
    check_env: bool = False,
    refs: list[EnvReference] | None = None,
) -> tuple[Definition | None, list[Problem]]:
    """One file's definition and problems. With `refs`, every `${env:NAME}` in it is
    added there, to check against the organizations and the shared list once all
    files are read (load_paths does)."""
    doc = load_document(path, raw)
    if isinstance(doc, Problem):
        return None, [doc]
    data = doc.data
    if not isinstance(data, dict):
        kind = _kind(data)
        return None, [
            *doc.problems,
            Problem(
                doc.locate(()),
                f"expected a mapping of fields (name, event, method, url, ...), got {kind}",
            ),
        ]
    problems: list[Problem] = list(doc.problems)
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
    if refs is not None:
        organization = data["organization"]
        if not isinstance(organization, str) or not re.match(NAME_PATTERN, organization):
            organization = folder_org or DEFAULT_ORGANIZATION
        refs.extend(
            EnvReference(organization, name, loc, doc.locate(loc, key=at_key))
            for loc, name, at_key in env_references(doc.data)
        )
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
        Problem(doc.locate(f.loc, key=f.at_key), f.message, f.severity, dotted(f.loc) or None)
        for f in check_spec(spec, check_env=check_env)
        if f.loc[0] not in skip
    ]


def _problem(doc: YamlDocument, loc: Loc, message: str, at_key: bool) -> Problem:
    return Problem(doc.locate(loc, key=at_key), message, field=dotted(loc) or None)


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
        return (
            loc,
            f"{where}: {value!r} is not one of: {expected}{_value_hint(value, expected)}",
            False,
        )
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
    if kind in ("int_type", "int_from_float"):
        return loc, f"{where}: expected a whole number, got {_kind(value)}", False
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


def _value_hint(value: Any, expected: str) -> str:
    """A did-you-mean for a value one of a few words: the same word in another case
    or with dashes for underscores (`post`, `new-rule-violation`) first, else the
    closest spelling."""
    if not isinstance(value, str):
        return ""
    choices = [c.strip() for c in expected.split(",") if c.strip()]
    folded = {_fold(c): c for c in choices}
    match = folded.get(_fold(value))
    if match is None:
        close = difflib.get_close_matches(_fold(value), list(folded), n=1, cutoff=0.7)
        match = folded[close[0]] if close else None
    return f" (did you mean '{match}'?)" if match else ""


def _fold(word: str) -> str:
    return word.strip().lower().replace("-", "_").replace(" ", "_")


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
                    field="name",
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


# -- which variables each organization reads (reconciler/envaccess.py) --------------


def _read_root(result: LoadResult, root: Path) -> None:
    """Once per definitions root: its organization folders and its shared list."""
    key = root.absolute()
    if key in result._roots:
        return
    first = not result._roots
    result._roots.add(key)
    try:
        folders = [p for p in root.iterdir() if re.match(NAME_PATTERN, p.name) and p.is_dir()]
    except OSError:
        folders = []
    for folder in sorted(folders):
        result.organizations.setdefault(folder.name, Location(_display(folder), 1, 1))
    file = root / envaccess.SHARED_ENV_FILE
    shown = _display(file)
    if first:
        result.shared_env_file = shown
    if not file.is_file():
        return
    result.files += 1
    try:
        raw = file.read_bytes()
    except OSError as exc:
        result.problems.append(Problem(Location(shown, 1, 1), f"cannot read: {exc.strerror}"))
        return
    _read_shared(result, shown, raw)


_SHARED_HELP = "expected `shared:` mapping each variable name to the reason it is shared"


def _read_shared(result: LoadResult, shown: str, raw: bytes) -> None:
    doc = load_document(shown, raw)
    if isinstance(doc, Problem):
        if not doc.message.startswith("file is empty"):  # empty: nothing is shared
            result.problems.append(doc)
        return
    result.problems.extend(doc.problems)
    data = doc.data
    if not isinstance(data, dict):
        result.problems.append(Problem(doc.locate(()), f"{_SHARED_HELP}, got {_kind(data)}"))
        return
    for key in data:
        if key != "shared":
            result.problems.append(
                Problem(doc.locate((key,), key=True), f"unknown field '{key}' (known: shared)")
            )
    shared = data.get("shared")
    if shared is None:
        return
    if not isinstance(shared, dict):
        result.problems.append(
            Problem(doc.locate(("shared",)), f"shared: {_SHARED_HELP}, got {_kind(shared)}")
        )
        return
    for name, reason in shared.items():
        if not isinstance(reason, str) or not reason.strip():
            result.problems.append(
                Problem(
                    doc.locate(("shared", name)),
                    f"shared.{name}: give the reason it is shared, as text (got {_kind(reason)})",
                )
            )
            continue
        result.shared_env[name] = reason
        result._shared_at.setdefault(name, doc.locate(("shared", name), key=True))


def _env_access_problems(result: LoadResult) -> list[Problem]:
    """Each reference an organization may not read, each shared name that cannot be
    shared, and each organization whose variables cannot be its own."""
    # Organizations of the files read, where each is first seen; then the folders,
    # which own their variables too when only some files are given (pre-commit).
    seen_in_files: dict[str, Location] = {}
    for definition in result.definitions:
        seen_in_files.setdefault(definition.spec.key[0], definition.name_at)
    for ref in result.env_references:
        seen_in_files.setdefault(ref.organization, ref.at)
    organizations = frozenset(result.organizations) | frozenset(seen_in_files)
    problems: list[Problem] = []
    for organization, at in sorted(seen_in_files.items()):
        why = envaccess.organization_problem(organization)
        if why is not None:
            problems.append(Problem(at, why))
    for name, at in result._shared_at.items():
        why = envaccess.shared_name_problem(name, organizations)
        if why is not None:
            problems.append(Problem(at, f"shared.{name}: {why}", field=f"shared.{name}"))
            del result.shared_env[name]
    access = envaccess.EnvAccess(organizations, dict(result.shared_env), result.shared_env_file)
    for group in access.collisions():
        for organization in group:
            if organization not in seen_in_files:
                continue
            others = " and ".join(o for o in group if o != organization)
            problems.append(
                Problem(
                    seen_in_files[organization],
                    f"organization {organization}: its variables' prefix "
                    f"{envaccess.prefix(organization)} is also organization {others}'s; "
                    "rename one of them, as two organizations never share variables",
                )
            )
    reported: set[tuple[Location, str]] = set()
    for ref in result.env_references:
        if (ref.at, ref.name) in reported:
            continue
        reported.add((ref.at, ref.name))
        why = access.refusal(ref.organization, ref.name)
        if why is not None:
            problems.append(Problem(ref.at, f"{dotted(ref.loc)}: {why}", field=dotted(ref.loc)))
    return problems
