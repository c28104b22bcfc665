"""The example folders are the tests of the definition format.

`examples/valid/<org>/*.yaml` must load without a single problem.
`examples/invalid/<case>/` is a small webhooks.d tree; loading it (with the
working directory set to the case folder) must print exactly the lines of its
`expected.txt`. To add a case, make the folder, write the YAML, then write
expected.txt by hand from what the message *should* say. A case with an `env` file
(NAME=value lines, # comments) is loaded as `validate --check-env` loads it, with
those variables set and no others.
"""

from __future__ import annotations

import os
import shutil
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest

from reconciler.loader import LoadResult, load_definitions
from reconciler.yamlsource import MAX_FILE_BYTES

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
VALID = EXAMPLES / "valid"
INVALID = EXAMPLES / "invalid"
VALID_FILES = sorted(VALID.rglob("*.yaml"))
INVALID_CASES = sorted(p for p in INVALID.iterdir() if p.is_dir())

ProblemLines = Callable[[Path], list[str]]


def _case_param(case: Path) -> object:
    return pytest.param(case, id=case.name)


def _expected(case: Path) -> list[str]:
    return (case / "expected.txt").read_text(encoding="utf-8").splitlines()


def _environment(case: Path) -> dict[str, str] | None:
    """The variables of the case's `env` file; None when it has none."""
    path = case / "env"
    if not path.exists():
        return None
    lines = path.read_text(encoding="utf-8").splitlines()
    pairs = [line.split("=", 1) for line in lines if line.strip() and not line.startswith("#")]
    return {name: value for name, value in pairs}


def _load_case(case: Path, monkeypatch: pytest.MonkeyPatch) -> LoadResult:
    """Load a case as `validate` would, from inside its folder (paths relative to it)."""
    monkeypatch.chdir(case)
    variables = _environment(case)
    if variables is None:
        return load_definitions(case)
    for name in list(os.environ):
        if name not in variables:
            monkeypatch.delenv(name)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    return load_definitions(case, check_env=True)


def test_there_are_enough_cases() -> None:
    assert len(INVALID_CASES) >= 35
    assert len(VALID_FILES) >= 5
    for case in INVALID_CASES:
        assert _expected(case), f"{case.name}/expected.txt is missing or empty"


@pytest.mark.parametrize("path", VALID_FILES, ids=lambda p: str(p.relative_to(VALID)))
def test_valid_example_loads_without_problems(path: Path) -> None:
    result = load_definitions(path)
    assert [str(p) for p in result.problems] == []
    assert len(result.definitions) == 1


def test_valid_folder_loads_every_definition(problem_lines: ProblemLines) -> None:
    assert problem_lines(VALID) == []
    result = load_definitions(VALID)
    assert result.ok
    assert len(result.definitions) == len(VALID_FILES) == result.files
    specs = [d.spec for d in result.definitions]
    assert {s.event.value for s in specs} == {
        "new_rule_violation",
        "reserved_instance_surplus",
        "reserved_instance_deficit",
    }
    assert {s.method.value for s in specs} == {"GET", "POST", "PUT", "PATCH", "DELETE"}
    # the organization comes from the folder when the file does not name it
    assert {s.key for s in specs} >= {
        ("initech", "status-get-query"),
        ("umbrella", "anchors-and-merge"),
    }


def test_valid_bodies_are_parsed_to_json_values() -> None:
    by_name = {d.spec.name: d.spec for d in load_definitions(VALID).definitions}
    relaxed = by_name["violations-relaxed-json"].body
    assert relaxed == {
        "text": "The rule {{name}} was violated at: {{time}}. Description {{description}}.",
        "channel": "#cloud-cost",
    }
    strict = by_name["surplus-strict-json"].body
    assert strict["count"] == 3 and strict["urgent"] is False and strict["notes"] is None
    assert by_name["status-get-query"].query["level"] == "3"
    assert by_name["status-get-query"].query["page"] == "true"


def test_anchors_aliases_and_merge_keys_expand() -> None:
    by_name = {d.spec.name: d.spec for d in load_definitions(VALID).definitions}
    body = by_name["anchors-and-merge"].body
    summary = "Reserved instance deficit at {{time}}: {{description}}"
    assert body["message"] == {
        "username": "reconciler",
        "icon": ":money_with_wings:",
        "text": summary,
    }
    assert body["fallback"] == summary
    assert body["blocks"][0]["text"] == summary


@pytest.mark.parametrize("case", [_case_param(c) for c in INVALID_CASES])
def test_invalid_case_reports_exactly_the_expected_lines(
    case: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert [str(p) for p in _load_case(case, monkeypatch).problems] == _expected(case)


@pytest.mark.parametrize("case", INVALID_CASES, ids=lambda p: p.name)
def test_invalid_case_is_not_ok(case: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert not _load_case(case, monkeypatch).ok


def test_a_case_with_an_env_file_is_valid_without_check_env() -> None:
    # What those cases find is about the environment only: the files themselves pass.
    with_env = [case for case in INVALID_CASES if _environment(case) is not None]
    assert with_env
    for case in with_env:
        assert load_definitions(case).ok, case.name


def test_one_run_reports_every_bad_file(tmp_path: Path, problem_lines: ProblemLines) -> None:
    """Every single-file case copied side by side: each file's problems still show."""
    expected: list[str] = []
    copied = 0
    for case in INVALID_CASES:
        files = list(case.rglob("*.y*ml"))
        if [f.relative_to(case).as_posix() for f in files] != ["acme/hook.yaml"]:
            continue
        if _environment(case) is not None:
            continue  # its problems need --check-env and its variables
        target = tmp_path / "acme" / f"{case.name}.yaml"
        target.parent.mkdir(exist_ok=True)
        shutil.copyfile(files[0], target)
        copied += 1
        expected += [
            line.replace("acme/hook.yaml:", f"acme/{case.name}.yaml:", 1)
            for line in _expected(case)
        ]
    assert copied >= 30
    lines = problem_lines(tmp_path)
    assert sorted(lines) == sorted(expected)
    assert load_definitions(tmp_path).files == copied


def test_repository_webhooks_d_is_valid(repo_root: Path, problem_lines: ProblemLines) -> None:
    assert problem_lines(repo_root / "webhooks.d") == []
    assert len(load_definitions(repo_root / "webhooks.d").definitions) >= 1


BASE = b"name: hook\nevent: new_rule_violation\nmethod: POST\nurl: https://hooks.acme.example/in\n"


def _write(root: Path, relative: str, data: bytes) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_non_utf8_bytes_are_reported_where_they_are(
    tmp_path: Path, problem_lines: ProblemLines
) -> None:
    # "café" in Latin-1: the é is the single byte 0xe9
    _write(tmp_path, "acme/hook.yaml", BASE + b"description: caf\xe9 au lait\n")
    assert problem_lines(tmp_path) == [
        "acme/hook.yaml:5:17: file is not valid UTF-8 (byte 0xe9 cannot be decoded)"
    ]


def test_utf8_byte_order_mark_is_accepted(tmp_path: Path, problem_lines: ProblemLines) -> None:
    _write(tmp_path, "acme/hook.yaml", b"\xef\xbb\xbf" + BASE)
    assert problem_lines(tmp_path) == []


def test_a_file_over_one_mebibyte_is_refused(tmp_path: Path, problem_lines: ProblemLines) -> None:
    filler = b"# padding padding padding padding padding padding padding padding\n"
    data = BASE + filler * (MAX_FILE_BYTES // len(filler) + 1)
    assert len(data) > 1024 * 1024
    _write(tmp_path, "acme/big.yaml", data)
    assert problem_lines(tmp_path) == [
        f"acme/big.yaml:1:1: file is too large ({len(data):,} bytes; a definition may have "
        f"at most {MAX_FILE_BYTES:,})"
    ]


def test_a_file_of_exactly_the_limit_is_read(tmp_path: Path, problem_lines: ProblemLines) -> None:
    data = BASE + b"#" * (MAX_FILE_BYTES - len(BASE) - 1) + b"\n"
    assert len(data) == MAX_FILE_BYTES
    _write(tmp_path, "acme/hook.yaml", data)
    assert problem_lines(tmp_path) == []


def _measure_peak(load: Callable[[], list[str]]) -> tuple[list[str], int]:
    tracemalloc.start()
    try:
        lines = load()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return lines, peak


def test_alias_bomb_is_refused_without_expanding(problem_lines: ProblemLines) -> None:
    lines, peak = _measure_peak(lambda: problem_lines(INVALID / "alias-bomb"))
    assert len(lines) == 1
    assert "alias bomb" in lines[0] and lines[0].endswith("refused")
    assert peak < 50 * 1024 * 1024


def test_larger_alias_bomb_of_mappings_is_refused(
    tmp_path: Path, problem_lines: ProblemLines
) -> None:
    # twelve levels of ten: 10**12 values if anything expanded it
    levels = ["l0: &l0 {" + ", ".join(f"k{i}: lol" for i in range(10)) + "}"]
    for level in range(1, 12):
        items = ", ".join(f"k{i}: *l{level - 1}" for i in range(10))
        levels.append(f"l{level}: &l{level} {{{items}}}")
    _write(tmp_path, "acme/bomb.yaml", ("\n".join(levels) + "\n").encode())
    lines, peak = _measure_peak(lambda: problem_lines(tmp_path))
    assert len(lines) == 1 and lines[0].startswith("acme/bomb.yaml:")
    assert lines[0].endswith("(an alias bomb or a runaway anchor); refused")
    assert peak < 50 * 1024 * 1024


def test_aliases_in_moderation_are_fine(tmp_path: Path, problem_lines: ProblemLines) -> None:
    text = BASE + b"body:\n  a: &x [1, 2, 3]\n  b: *x\n  c: [*x, *x]\n"
    _write(tmp_path, "acme/hook.yaml", text)
    assert problem_lines(tmp_path) == []
    (definition,) = load_definitions(tmp_path).definitions
    assert definition.spec.body == {"a": [1, 2, 3], "b": [1, 2, 3], "c": [[1, 2, 3], [1, 2, 3]]}


def test_a_single_file_is_loaded_alone_with_its_webhooks_d_organization(
    tmp_path: Path,
) -> None:
    inside = _write(tmp_path, "webhooks.d/acme/hook.yaml", BASE)
    _write(tmp_path, "webhooks.d/acme/same-name.yaml", BASE)
    outside = _write(tmp_path, "elsewhere/acme/hook.yaml", BASE)
    result = load_definitions(inside)
    assert result.files == 1 and result.ok  # the other file (same name) is not read
    assert result.definitions[0].spec.key == ("acme", "hook")
    # with no webhooks.d above it, a lone file falls back to the default organization
    assert load_definitions(outside).definitions[0].spec.key == ("default", "hook")


def test_files_and_folders_starting_with_a_dot_are_ignored(
    tmp_path: Path, problem_lines: ProblemLines
) -> None:
    _write(tmp_path, "acme/hook.yaml", BASE)
    _write(tmp_path, "acme/.draft.yaml", b"not: [valid")
    _write(tmp_path, ".git/acme/x.yaml", b"not: [valid")
    _write(tmp_path, "acme/notes.txt", b"not: [valid")
    assert problem_lines(tmp_path) == []
    assert load_definitions(tmp_path).files == 1


@pytest.mark.parametrize(
    ("text", "written", "name"),
    [
        ("at {{time}", "{{time}", "time"),
        ("at {{time} and on", "{{time}", "time"),
        ("at {{ time }", "{{ time }", "time"),
        ("at {{time", "{{time", "time"),
        ("at {time}}", "{time}}", "time"),
        ("at { time }}", "{ time }}", "time"),
        ("at time}}", "time}}", "time"),
        ("{{event_id}{{name}}", "{{event_id}", "event_id"),
    ],
)
def test_a_placeholder_with_a_brace_too_few_is_an_error(
    tmp_path: Path, problem_lines: ProblemLines, text: str, written: str, name: str
) -> None:
    _write(tmp_path, "acme/hook.yaml", BASE + b"body:\n  text: " + repr(text).encode() + b"\n")
    assert problem_lines(tmp_path) == [
        f'acme/hook.yaml:6:9: body.text: unbalanced placeholder "{written}": write {{{{{name}}}}}'
    ]


@pytest.mark.parametrize(
    "text",
    [
        '{"a": {"b": true}}',  # JSON text in a string
        "{x} and {name}",  # single braces
        "{{{time}}}",  # a placeholder in braces
        "{{time}}}",
        "{{ 5 and } {{",  # no name beside the braces
        "runtime}}",  # a longer word than the placeholder
        "{{name}} {{ time }} {{  event_id  }}",
    ],
)
def test_braces_that_are_not_a_placeholder_stay_text(
    tmp_path: Path, problem_lines: ProblemLines, text: str
) -> None:
    _write(tmp_path, "acme/hook.yaml", BASE + b"body:\n  text: " + repr(text).encode() + b"\n")
    assert problem_lines(tmp_path) == []
