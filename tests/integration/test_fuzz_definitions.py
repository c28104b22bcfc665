"""Fuzzing the definition loader and the renderer (hypothesis).

Loader: arbitrary bytes, generated YAML documents, mangled copies of the example
definitions and valid-shaped definitions with hostile values are written as files
under a webhooks.d/ tree and loaded with `load_definitions` (and, for a sample,
`reconciler validate`). Nothing may escape as an exception; every problem names
the file, a line of it and a column, and prints as one `path:line:col: message`
line; a definition that loads reads back the same after export.

Renderer: any event values in any body shape give valid JSON holding exactly
those values; header values never hold a line break; a value in the URL never
leaves its path segment.

test_render.py and test_jsonbody.py hold the fixed-shape properties; this file
varies the definitions themselves.
"""

from __future__ import annotations

import json
import re
import string
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx
import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from reconciler.cli import cli
from reconciler.export import definition_yaml
from reconciler.loader import LoadResult, load_definitions, load_one
from reconciler.model import NAME_PATTERN, Event, Method, WebhookSpec
from reconciler.render import EventData, RenderError, render
from reconciler.templates import PLACEHOLDERS
from reconciler.yamlsource import MAX_DEPTH

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "valid"
REPO_EXAMPLES = Path(__file__).resolve().parents[2] / "webhooks.d"
SEEDS = sorted(
    path.read_text(encoding="utf-8")
    for folder in (EXAMPLES, REPO_EXAMPLES)
    for path in folder.rglob("*.yaml")
)
PROBLEM_LINE = re.compile(r"(?P<path>.+?):(?P<line>[1-9]\d*):(?P<col>[1-9]\d*): (?P<message>.+)")
SUMMARY_LINE = re.compile(r"(valid|invalid): .+\.")

FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# -- values ---------------------------------------------------------------------------

TRICKY = [
    "",
    " ",
    '"',
    "'",
    "\\",
    "\\n",
    "\n",
    "\r\n",
    "\r",
    "\t",
    "\x00",
    "\x07",
    "\x1b",
    "\x7f",
    "\x85",
    "\u2028",
    "\ufeff",
    "\U0001f600",
    "é",
    "{{",
    "}}",
    "{{name}}",
    "{{ time }}",
    "{{nmae}}",
    "{{}}",
    "}}{{",
    "${env:SECRET}",
    "${env:",
    "${",
    "$",
    "%",
    "%2F",
    "/",
    "..",
    "?",
    "#",
    "&",
    "=",
    ":",
    "- ",
    ": ",
    "#!",
    "&anchor",
    "*alias",
    "!!python/object",
    "<<",
    "---",
    "...",
    "null",
    "~",
    "yes",
    "0x1F",
    "1e400",
    ".nan",
    "2026-11-29",
    "12:30:00",
]
_any_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=20)
hostile_text = st.lists(st.one_of(_any_text, st.sampled_from(TRICKY)), max_size=5).map("".join)
huge_numbers = st.one_of(
    st.integers(),
    st.integers(min_value=10**18, max_value=10**400),
    st.integers(max_value=-(10**18), min_value=-(10**400)),
    st.floats(allow_nan=True, allow_infinity=True),
)
scalars = st.one_of(st.none(), st.booleans(), huge_numbers, hostile_text)
yaml_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(hostile_text, inner, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = list(WebhookSpec.model_fields)
BASE = "name: hook\nevent: new_rule_violation\nmethod: POST\nurl: https://hooks.example.com/in\n"


def nested(depth: int, leaf: Any) -> Any:
    """`leaf` inside `depth` levels of alternating mappings and lists."""
    for level in range(depth):
        leaf = {"k": leaf} if level % 2 else [leaf]
    return leaf


def nested_json(depth: int, leaf: str) -> str:
    """JSON text: `leaf` inside `depth` arrays (written out, as json.dumps would
    recurse past Python's limit)."""
    return "[" * depth + json.dumps(leaf) + "]" * depth


# Depths around the loader's limit, around where Python's parsers give up by default,
# and past where they give up under Hypothesis (which raises the recursion limit).
depths = st.one_of(
    st.integers(MAX_DEPTH - 3, MAX_DEPTH + 2), st.integers(900, 1100), st.just(50_000)
)


# Definitions of the right shape whose values are anything but polite.
valid_names = st.from_regex(NAME_PATTERN, fullmatch=True)
definitions = st.fixed_dictionaries(
    {
        "name": st.one_of(valid_names, valid_names, hostile_text),
        "event": st.one_of(st.sampled_from([e.value for e in Event]), hostile_text),
        "method": st.one_of(st.sampled_from([m.value for m in Method]), hostile_text),
        "url": st.one_of(
            hostile_text.map(lambda text: "https://hooks.example.com/" + text),
            st.just("https://hooks.example.com/{{name}}?at={{time}}"),
            st.just("${env:ACME_URL}"),
            hostile_text,
        ),
    },
    optional={
        "headers": st.dictionaries(
            st.one_of(st.sampled_from(["Content-Type", "Authorization", "X-Id"]), hostile_text),
            st.one_of(hostile_text, huge_numbers),
            max_size=3,
        ),
        "body": st.one_of(
            yaml_values,
            hostile_text.map(lambda text: json.dumps({"text": text})),
            st.builds(nested, st.integers(MAX_DEPTH - 4, MAX_DEPTH + 2), hostile_text),
            st.builds(nested_json, depths, hostile_text),
        ),
        "query": st.dictionaries(hostile_text, st.one_of(hostile_text, huge_numbers), max_size=3),
        "description": st.one_of(hostile_text, huge_numbers),
        "enabled": st.one_of(st.booleans(), hostile_text),
        "protect": st.booleans(),
        "signing_secret": st.one_of(st.just("${env:ACME_SECRET}"), hostile_text),
        "timeout": st.one_of(st.sampled_from(["15s", "500ms", "1m", "0s", "61s"]), hostile_text),
        "retry": st.one_of(
            st.fixed_dictionaries(
                {"schedule": st.lists(st.sampled_from(["5s", "1m", "2h", "x"]), max_size=22)},
                optional={"jitter": huge_numbers},
            ),
            yaml_values,
        ),
        "rate_limit": st.one_of(st.sampled_from(["1/s", "20/m", "0/s"]), hostile_text),
        "max_in_flight": st.one_of(st.sampled_from([1, 10, 1000, 0, 1001, -1]), huge_numbers),
        "organization": st.one_of(st.just("acme"), hostile_text),
    },
)

# Edits that YAML gives a meaning to, for mangling a valid file.
SNIPPETS = [
    *TRICKY,
    "&a ",
    "*a",
    "<<: *a\n",
    "!!str ",
    "!!binary ",
    "!!int ",
    "!custom ",
    "? ",
    "|\n",
    ">-\n",
    "{",
    "[",
    "]",
    "\n  ",
    "\n- ",
    "%YAML 1.1\n",
    "x: y\n",
    "name: other\n",
]


@st.composite
def mangled(draw: st.DrawFn) -> str:
    text = draw(st.sampled_from(SEEDS))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(text)))
        kind = draw(st.sampled_from(["insert", "delete", "duplicate-line"]))
        if kind == "insert":
            text = text[:at] + draw(st.sampled_from(SNIPPETS)) + text[at:]
        elif kind == "delete":
            text = text[:at] + text[at + draw(st.integers(1, 12)) :]
        else:
            lines = text.splitlines(keepends=True) or [""]
            line = draw(st.sampled_from(lines))
            text = text[:at] + line + text[at:]
    return text


class _Dumper(yaml.SafeDumper):
    """PyYAML's own dumper writes NEL in single quotes, where it reads back as a
    space; double quotes keep it (and LS, PS), as `reconciler export` does."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = '"' if any(c in value for c in "\x85\u2028\u2029") else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def to_yaml(data: Any) -> str:
    return yaml.dump(data, Dumper=_Dumper, allow_unicode=True, sort_keys=False)


# -- loading ----------------------------------------------------------------------------


@contextmanager
def definitions_tree(files: dict[str, bytes]) -> Iterator[Path]:
    """A fresh webhooks.d/ holding `files` (relative path -> content)."""
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / "webhooks.d"
        for relative, raw in files.items():
            target = root / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(raw)
        yield root


def load_file(raw: bytes, relative: str = "acme/hook.yaml") -> LoadResult:
    """Load one file written at webhooks.d/RELATIVE, its problems checked."""
    with definitions_tree({relative: raw}) as root:
        result = load_definitions(root)
        check_problems(result, {root / relative: raw})
        return result


def last_line(raw: bytes) -> int:
    """The last line a problem may be on, counted as YAML counts lines (and so the
    locations it gives): a NEL, LS or PS character ends a line too, and a file that
    does not end with a line break has its end on the line after its last."""
    text = raw.decode("utf-8", errors="replace")
    breaks = re.findall("\r\n|[\n\r\x85\u2028\u2029]", text)
    ends_with_break = bool(breaks) and text.endswith(breaks[-1])
    return len(breaks) + (1 if ends_with_break else 2)


def check_problems(result: LoadResult, files: dict[Path, bytes]) -> None:
    """Each problem names one of `files`, a line within it and a column, on one line."""
    lines = {file.resolve(): last_line(raw) for file, raw in files.items()}
    assert result.files == len(files)
    # Every file gave a definition or an error: none was dropped without a word.
    loaded = {Path(d.path).resolve() for d in result.definitions}
    refused = {Path(p.location.path).resolve() for p in result.errors}
    assert loaded | refused == set(lines), (loaded, refused)
    for problem in result.problems:
        where = problem.location
        file = Path(where.path).resolve()
        assert file in lines, (where.path, list(lines))
        assert 1 <= where.line <= lines[file], (str(problem), lines[file])
        assert where.col >= 1
        assert problem.message.strip(), str(problem)
        shown = str(problem)
        assert len(shown.splitlines()) == 1, shown
        match = PROBLEM_LINE.fullmatch(shown)
        assert match is not None, shown
        assert Path(match["path"]).resolve() == file


def assert_round_trips(result: LoadResult) -> None:
    """A definition that loads reads back the same once exported (`reconciler export`)."""
    (definition,) = result.definitions
    spec = definition.spec
    exported = definition_yaml(spec.canonical())
    again, problems = load_one("exported.yaml", exported.encode("utf-8"), spec.key[0])
    assert again is not None, [str(p) for p in problems]
    assert again.spec.canonical_json() == spec.canonical_json()


@FUZZ
@given(raw=st.binary(max_size=300))
def test_any_bytes_are_loaded_or_refused_with_a_located_problem(raw: bytes) -> None:
    load_file(raw)


@FUZZ
@given(document=st.one_of(yaml_values, st.dictionaries(st.sampled_from(FIELDS), yaml_values)))
def test_any_yaml_document_is_loaded_or_refused_with_a_located_problem(document: Any) -> None:
    text = to_yaml(document)
    result = load_file(text.encode("utf-8"))
    if result.definitions:
        assert_round_trips(result)


@FUZZ
@given(text=mangled())
def test_a_mangled_example_is_loaded_or_refused_with_a_located_problem(text: str) -> None:
    result = load_file(text.encode("utf-8", errors="replace"))
    if result.definitions:
        assert_round_trips(result)


@settings(FUZZ, max_examples=300)
@given(data=definitions)
def test_a_definition_with_hostile_values_validates_or_names_its_problem(
    data: dict[str, Any],
) -> None:
    text = to_yaml(data)
    result = load_file(text.encode("utf-8"))
    if not result.ok:
        assert result.errors
        return
    (definition,) = result.definitions
    # What was written is what was read: the YAML round trip loses nothing.
    assert definition.spec == WebhookSpec.model_validate({"organization": "acme", **data})
    assert_round_trips(result)


def test_the_hostile_definitions_reach_both_outcomes() -> None:
    # The property above is only as good as its inputs: some must load, some not.
    outcomes: set[bool] = set()

    @settings(FUZZ, max_examples=300)
    @given(data=definitions)
    def run(data: dict[str, Any]) -> None:
        text = to_yaml(data)
        outcomes.add(load_file(text.encode("utf-8")).ok)

    run()
    assert outcomes == {True, False}


# Where files go: organizations' folders (valid names or not) and the top level.
file_names = st.builds(
    lambda folder, name: f"{folder}/{name}" if folder else name,
    st.sampled_from(["acme", "globex", "Acme Corp", "ü", "a.b", None]),
    st.sampled_from(["a.yaml", "b.yaml", "c.yml", "hook.YAML.yaml"]),
)


@settings(FUZZ, max_examples=40)
@given(
    files=st.dictionaries(
        file_names,
        st.one_of(
            definitions.map(to_yaml),
            mangled(),
        ).map(lambda text: text.encode("utf-8", errors="replace")),
        min_size=1,
        max_size=3,
    ),
    fmt=st.sampled_from(["text", "json"]),
)
def test_reconciler_validate_prints_one_located_line_per_problem(
    files: dict[str, bytes], fmt: str
) -> None:
    with definitions_tree(files) as root:
        result = load_definitions(root)
        check_problems(result, {root / name: raw for name, raw in files.items()})
        run = CliRunner().invoke(cli, ["validate", str(root), "--format", fmt])
    assert run.exception is None or isinstance(run.exception, SystemExit), run.output
    assert run.exit_code == (0 if result.ok else 1), run.output
    assert "Traceback" not in run.output
    if fmt == "json":
        report = json.loads(run.output)
        assert report["valid"] is result.ok
        assert [p["line"] for p in report["problems"]] == [p.location.line for p in result.problems]
        return
    *problems, summary = run.output.splitlines()
    assert SUMMARY_LINE.fullmatch(summary), summary
    assert problems == [str(p) for p in result.problems]
    for line in problems:
        assert PROBLEM_LINE.fullmatch(line), line


# -- found by fuzzing ---------------------------------------------------------------------


def test_a_character_yaml_refuses_is_located_on_one_line(
    tmp_path: Path, problem_lines: Callable[[Path], list[str]]
) -> None:
    # BUG: a NUL or other control character was reported at 1:1, as PyYAML's own
    # two-line text ending in `in "<unicode string>", position N`.
    (tmp_path / "acme").mkdir()
    (tmp_path / "acme" / "hook.yaml").write_bytes(BASE.encode() + b"description: x\x00y\n")
    assert problem_lines(tmp_path) == [
        "acme/hook.yaml:5:15: YAML syntax error: unacceptable character #x0000: "
        "control characters are not allowed"
    ]


def test_a_line_break_quoted_in_a_problem_is_escaped(
    tmp_path: Path, problem_lines: Callable[[Path], list[str]]
) -> None:
    # BUG: keys and values quoted in a message kept their line breaks, so one problem
    # printed as several lines, the later ones naming no file.
    (tmp_path / "acme").mkdir()
    text = BASE + 'headers:\n  "X-A\\rB": 5\n"extra\\u2028field": 1\n'  # a CR, an LS
    (tmp_path / "acme" / "hook.yaml").write_text(text, encoding="utf-8")
    assert problem_lines(tmp_path) == [
        "acme/hook.yaml:6:13: headers.X-A\\rB: expected text, got number 5 (quote it in YAML)",
        "acme/hook.yaml:7:1: unknown field 'extra\\u2028field' (known: name, organization, "
        "event, method, url, headers, body, query, description, enabled, protect, "
        "signing_secret, timeout, retry, rate_limit, max_in_flight, allow_literal)",
    ]


@pytest.mark.parametrize("depth", [MAX_DEPTH, MAX_DEPTH + 1, 1_000, 100_000])
@pytest.mark.parametrize("opening", ["[", "{a: ", '{"a": '])
def test_a_json_body_nested_past_the_limit_is_a_problem_not_a_crash(
    depth: int, opening: str
) -> None:
    # BUG: JSON text nested about a thousand levels deep made the parsers raise
    # RecursionError, which escaped `reconciler validate` as a traceback (and how
    # deep was too deep depended on the stack at the time).
    closing = "]" if opening == "[" else "}"
    body = opening * depth + "1" * (opening != "[") + closing * depth
    text = BASE + f"body: '{body}'\n"
    with definitions_tree({"acme/deep.yaml": text.encode()}) as root:
        run = CliRunner().invoke(cli, ["validate", str(root)])
    assert run.exception is None or isinstance(run.exception, SystemExit), run.output
    if depth <= MAX_DEPTH:
        assert run.exit_code == 0, run.output
        return
    problem, summary = run.output.splitlines()
    assert problem == f"{root}/acme/deep.yaml:5:7: body: nested more than {MAX_DEPTH} levels deep"
    assert summary.startswith("invalid: 1 error")


# -- rendering --------------------------------------------------------------------------

MOMENT = datetime(2026, 11, 29, 21, 22, 42, tzinfo=UTC)
event_values = st.text(st.characters(exclude_categories=["Cs"]), max_size=30) | st.sampled_from(
    TRICKY
)
events = st.builds(
    EventData,
    event=st.just("new_rule_violation"),
    organization=event_values,
    name=event_values,
    description=event_values,
    time=st.just(MOMENT),
    id=event_values,
)

# Text around placeholders: anything but what starts a placeholder or a reference.
literal = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="{}$"), max_size=8)
placeholder = st.tuples(st.sampled_from(PLACEHOLDERS), st.sampled_from(["", " ", "  "]))


@dataclass(frozen=True)
class Template:
    """A string of a definition: literal text and placeholders ({{name}}, {{ time }})."""

    parts: tuple[str | tuple[str, str], ...]

    def written(self) -> str:
        return "".join(
            p if isinstance(p, str) else "{{%s%s%s}}" % (p[1], p[0], p[1]) for p in self.parts
        )

    def substituted(self, values: dict[str, str]) -> str:
        return "".join(p if isinstance(p, str) else values[p[0]] for p in self.parts)


def templates_of(
    text: st.SearchStrategy[str], names: st.SearchStrategy[Any] = placeholder, min_size: int = 0
) -> st.SearchStrategy[Template]:
    parts = st.lists(st.one_of(text, names), min_size=min_size, max_size=5)
    return parts.map(lambda p: Template(tuple(p)))


body_templates = st.recursive(
    st.one_of(
        templates_of(literal),
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=False, allow_infinity=False),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(literal, inner, min_size=1, max_size=3)
    ),
    max_leaves=10,
)


def shape(value: Any, leaf: Callable[[Template], str]) -> Any:
    """The body with each Template replaced by leaf(template)."""
    if isinstance(value, Template):
        return leaf(value)
    if isinstance(value, dict):
        return {key: shape(item, leaf) for key, item in value.items()}
    if isinstance(value, list):
        return [shape(item, leaf) for item in value]
    return value


def spec_with(**fields: Any) -> WebhookSpec:
    base = {
        "name": "hook",
        "organization": "acme",
        "event": "new_rule_violation",
        "method": "POST",
        "url": "https://hooks.example.com/in",
    }
    return WebhookSpec.model_validate({**base, **fields})


@settings(FUZZ, max_examples=300)
@given(body=body_templates, event=events)
def test_any_event_values_in_any_body_give_json_holding_exactly_them(
    body: Any, event: EventData
) -> None:
    spec = spec_with(body={"root": shape(body, Template.written)})
    values = event.placeholder_values(spec.name)
    request = render(spec, event, {})
    assert request.body is not None
    sent = json.loads(request.body.decode("utf-8"))
    assert sent == {"root": shape(body, lambda t: t.substituted(values))}
    assert request.headers == {"Content-Type": "application/json"}


@FUZZ
@given(
    secret=st.text(st.characters(exclude_categories=["Cs"]), max_size=20) | st.sampled_from(TRICKY),
    prefix=st.sampled_from(["", "Bearer ", "token="]),
)
def test_a_header_value_never_holds_a_line_break(secret: str, prefix: str) -> None:
    spec = spec_with(headers={"Authorization": prefix + "${env:TOKEN}", "X-Plain": "plain"})
    event = EventData("new_rule_violation", "acme", "n", "d", MOMENT, "evt_1")
    try:
        request = render(spec, event, {"TOKEN": secret})
    except RenderError as exc:  # refused, and without showing the value
        assert "\r" in secret or "\n" in secret
        assert str(exc) == "header Authorization: its resolved value holds a line break"
        return
    for value in request.headers.values():
        assert "\r" not in value and "\n" not in value
    assert request.headers["Authorization"] == prefix + secret


# Literal URL text is the definition's own (ASCII, as url: requires); values are anything.
url_literal = st.text(string.ascii_letters + string.digits + "-._~", min_size=1, max_size=6)


url_placeholder = st.tuples(st.sampled_from(PLACEHOLDERS), st.just(""))  # a URL has no spaces
url_segments = templates_of(url_literal, url_placeholder, min_size=1)


@settings(FUZZ, max_examples=300)
@given(path=st.lists(url_segments, min_size=1, max_size=4), event=events)
def test_a_value_in_the_url_never_leaves_its_path_segment(
    path: list[Template], event: EventData
) -> None:
    # A segment written as a bare "." or ".." is a dot segment of the definition itself.
    assume(all(t.written() not in (".", "..") for t in path))
    spec = spec_with(url="https://hooks.example.com/" + "/".join(t.written() for t in path))
    values = event.placeholder_values(spec.name)
    request = render(spec, event, {})
    assert all(33 <= ord(c) < 127 for c in request.url), request.url
    parts = urlsplit(request.url)
    assert (parts.scheme, parts.netloc, parts.query, parts.fragment) == (
        "https",
        "hooks.example.com",
        "",
        "",
    )
    raw_segments = parts.path.split("/")[1:]
    assert [unquote(s) for s in raw_segments] == [t.substituted(values) for t in path]
    assert not {".", ".."} & set(raw_segments)
    # What the sender puts on the wire has as many segments, none of them climbing.
    raw_path = httpx.URL(request.url).raw_path.decode("ascii")
    assert raw_path.split("/")[1:] == raw_segments
