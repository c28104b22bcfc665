"""export: the live state written back as definitions that plan as unchanged."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from reconciler.export import definition_yaml, export
from reconciler.loader import load_one
from reconciler.model import WebhookSpec
from reconciler.store.base import Write
from reconciler.store.sqlite import SqliteStore
from tests.support.helpers_state import EXAMPLES, cli_env, load_specs, run_cli, spec, sqlite_url

# Definitions chosen to stress the YAML writer: each is written as a file under
# its organization's folder (None: at the top, so organization "default").
VARIED: dict[str, tuple[str | None, str]] = {
    "relaxed-json": (
        "acme",
        """\
name: relaxed-json
event: new_rule_violation
method: POST
url: https://hooks.example.com/relaxed
body: |
  {
    // JSON5: comments, unquoted keys, single quotes, trailing commas
    text: 'Rule {{name}}: "quoted", \\\\backslash, it\\'s',
    count: 3, ratio: 0.25, big: 12345678901234567890,
    nested: {list: [1, 'two', true, null, -0.5e-3],},
  }
""",
    ),
    "json-string-body": (
        "acme",
        """\
name: json-string-body
event: new_rule_violation
method: POST
url: https://hooks.example.com/hello
body: '"hello"'
""",
    ),
    "strict-json-text": (
        "acme",
        """\
name: strict-json-text
event: reserved_instance_surplus
method: PUT
url: https://hooks.example.com/strict
body: '{"a": [1, 2, {"b": "c"}], "empty": {}, "none": [], "text": "line1\\nline2"}'
""",
    ),
    "multi-line": (
        "acme",
        """\
name: multi-line
event: reserved_instance_deficit
method: PATCH
url: https://hooks.example.com/multi
description: |
  First line.
    An indented second line.

  A paragraph after a blank line, ending with a newline.
body:
  text: |-
    *Deficit* at {{time}}
    > {{description}}
      - indented list item
  trailing: "ends with two newlines\\n\\n"
  leading: "  starts with spaces\\nand goes on"
  crlf: "windows\\r\\nline"
  trailing_spaces: "spaces at the end   \\nnext"
  tabs: "a\\tb\\n\\tc"
""",
    ),
    "query-numbers": (
        "globex",
        """\
name: query-numbers
event: new_rule_violation
method: GET
url: https://status.globex.example/api?fixed=1
query:
  limit: 10
  ratio: 0.5
  negative: -3
  flag: true
  off: false
  zero_padded: "007"
  rule: "{{name}}"
timeout: 2s
""",
    ),
    "unicode": (
        "globex",
        """\
name: unicode
event: new_rule_violation
method: POST
url: https://hooks.example.com/ünïcödé?q=日本
description: "Größe — 警告 🚨 «ça marche» \\u2028 after a line separator"
headers:
  X-Title: "Überwachung ✓"
body:
  text: "héllo wörld ✓ 日本語 🎉 {{name}}"
  emoji_key_😀: "value"
  rtl: "שלום"
""",
    ),
    "yaml-lookalikes": (
        "globex",
        """\
name: yaml-lookalikes
event: new_rule_violation
method: POST
url: https://hooks.example.com/lookalikes
body:
  "yes": "no"
  "on": "off"
  "null": "~"
  "123": "0x1F"
  "<<": "merge key as a plain key"
  date: "2024-01-01"
  time: "12:30:00"
  float_text: "1e3"
  dash: "- not a list"
  hash: "# not a comment"
  colon: "key: value"
  braces: "{{name}}"
  at: "@handle"
  tick: "`cmd`"
  quote: "'single'"
  dquote: '"double"'
  empty: ""
  space: " "
  bools: [true, false]
  numbers: [0, -1, 1.5, 100000000000000000000, 1.0e+100]
""",
    ),
    "everything-else": (
        "initech",
        """\
name: everything-else
event: reserved_instance_surplus
method: DELETE
url: ${env:INITECH_CLEANUP_URL}
query:
  token: ${env:INITECH_TOKEN}
headers:
  Authorization: Bearer ${env:INITECH_TOKEN}
  X-Literal-Key: not-a-reference
description: Disabled, protected, signed, rate limited, with its own retries.
enabled: false
protect: true
signing_secret: ${env:INITECH_SECRET_NEW} ${env:INITECH_SECRET_OLD}
timeout: 500ms
retry:
  schedule: [1s, 30s, 5m]
  jitter: 0.5
rate_limit: 20/m
max_in_flight: 3
allow_literal: [headers.X-Literal-Key]
""",
    ),
    "no-retries": (
        "initech",
        """\
name: no-retries
event: new_rule_violation
method: POST
url: https://hooks.example.com/no-retries
body: [1, "two", {"three": 3}]
retry:
  schedule: []
""",
    ),
    "scalar-body": (
        "initech",
        """\
name: scalar-body
event: new_rule_violation
method: POST
url: https://hooks.example.com/scalar
body: 42
""",
    ),
    "in-default": (
        None,
        """\
name: in-default
event: new_rule_violation
method: POST
url: https://hooks.example.com/default
headers:
  Authorization: Bearer abc123
body: {text: "{{organization}}/{{webhook}} {{event}} {{event_id}}"}
allow_literal: [headers.Authorization]
""",
    ),
}


def write_varied(folder: Path) -> None:
    for name, (organization, text) in VARIED.items():
        target = (folder / organization if organization else folder) / f"{name}.yaml"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")


def loaded(text: str, organization: str | None) -> WebhookSpec:
    definition, problems = load_one("x.yaml", text.encode("utf-8"), organization)
    assert definition is not None, [str(p) for p in problems]
    return definition.spec


# -- one definition at a time ----------------------------------------------------------


@pytest.mark.parametrize("name", sorted(VARIED))
def test_each_definition_round_trips(name: str) -> None:
    organization, text = VARIED[name]
    original = loaded(text, organization)
    exported = definition_yaml(original.canonical())
    assert exported.startswith("name: ")
    again = loaded(exported, original.key[0])
    assert again.canonical_json() == original.canonical_json()
    # and the file names its organization, so it also reads back outside its folder
    assert loaded(exported, None).key == original.key


@pytest.mark.parametrize(
    "text",
    [
        "next\x85line",
        "spaced \x85 next line",
        "line \u2028 separator",
        "paragraph \u2029 separator",
        "carriage\rreturn",
        "bell \x07 and escape \x1b",
        "bom \ufeff inside",
    ],
    ids=[
        "nel",
        "nel-spaced",
        "line-separator",
        "paragraph-separator",
        "lone-cr",
        "controls",
        "bom",
    ],
)
def test_unusual_characters_round_trip(text: str) -> None:
    original = WebhookSpec.model_validate(
        {
            "name": "odd",
            "organization": "acme",
            "event": "new_rule_violation",
            "method": "POST",
            "url": "https://hooks.example.com/odd",
            "description": text,
            "body": {"text": text, "list": [text]},
        }
    )
    again = loaded(definition_yaml(original.canonical()), "acme")
    assert again.canonical() == original.canonical()


def test_export_writes_one_file_per_webhook(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    try:
        specs = [loaded(text, org) for org, text in VARIED.values()]
        store.commit(
            [_put(s) for s in specs],
            [],
            expected_serial=0,
        )
        written = export(store.webhooks(), tmp_path / "out")
    finally:
        store.close()
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in written) == sorted(
        f"{s.key[0]}/{s.name}.yaml" for s in specs
    )
    for path in written:
        assert path.read_text(encoding="utf-8").startswith("name: ")


def _put(spec: WebhookSpec) -> Write:
    return Write("put", *spec.key, spec.canonical_json())


# -- the whole state, through the CLI ----------------------------------------------------


@pytest.fixture
def applied(tmp_path: Path) -> Path:
    """A project whose examples and varied definitions are live."""
    folder = tmp_path / "webhooks.d"
    shutil.copytree(EXAMPLES, folder)
    write_varied(folder)
    result = run_cli(["apply", "--auto-approve", "--actor", "exporter"], tmp_path, env(tmp_path))
    assert result.returncode == 0, result.stderr
    return tmp_path


def env(project: Path) -> dict[str, str]:
    return cli_env(RECONCILER_STATE=sqlite_url(project / "state.db"))


def test_export_then_plan_shows_no_change(applied: Path) -> None:
    expected = len(load_specs(applied / "webhooks.d"))
    exported = run_cli(["export", "exported.d"], applied, env(applied))
    assert exported.returncode == 0, exported.stderr
    assert exported.stdout.strip() == (
        f"Exported {expected} webhooks and the shared list of variables to exported.d."
    )

    planned = run_cli(
        ["plan", "exported.d", "--format", "json", "--detailed-exitcode"], applied, env(applied)
    )
    data = json.loads(planned.stdout)
    assert data["changes"] == [], data["changes"]
    assert data["drift"] == []
    assert data["summary"] == {
        "create": 0,
        "update": 0,
        "delete": 0,
        "unchanged": expected,
        "drift": 0,
    }
    assert planned.returncode == 0

    validated = run_cli(["validate", "exported.d"], applied, env(applied))
    assert validated.returncode == 0, validated.stdout
    assert f"valid: {expected} definitions in 4 organizations" in validated.stdout

    # the exported files describe exactly what the originals do
    originals = {s.key: s.canonical() for s in load_specs(applied / "webhooks.d")}
    assert {s.key: s.canonical() for s in load_specs(applied / "exported.d")} == originals


def test_export_one_organization(applied: Path) -> None:
    exported = run_cli(["export", "acme-only.d", "--org", "acme"], applied, env(applied))
    assert exported.returncode == 0, exported.stderr
    folders = sorted(p.name for p in (applied / "acme-only.d").iterdir())
    assert folders == ["acme"]
    acme = {s.key for s in load_specs(applied / "webhooks.d") if s.key[0] == "acme"}
    assert {s.key for s in load_specs(applied / "acme-only.d")} == acme
    assert exported.stdout.strip() == f"Exported {len(acme)} webhooks to acme-only.d."

    planned = run_cli(
        ["plan", "acme-only.d", "--org", "acme", "--detailed-exitcode"], applied, env(applied)
    )
    assert planned.returncode == 0, planned.stdout
    assert "No changes" in planned.stdout


def test_export_of_a_state_that_does_not_exist_is_an_error(tmp_path: Path) -> None:
    result = run_cli(["export", "out.d"], tmp_path, env(tmp_path))
    assert result.returncode == 1
    assert result.stderr.startswith("error: no state at ")
    assert not (tmp_path / "out.d").exists()


@pytest.mark.parametrize("blocked", ["below-a-file", "organization-is-a-file"])
def test_export_to_a_place_it_cannot_write_is_one_error_line(applied: Path, blocked: str) -> None:
    # run_cli fails the test on a traceback (today: NotADirectoryError / FileExistsError)
    (applied / "afile").write_text("x")
    target = "afile/out.d"
    if blocked == "organization-is-a-file":
        (applied / "out.d").mkdir()
        (applied / "out.d" / "acme").write_text("not a folder")
        target = "out.d"
    result = run_cli(["export", target], applied, env(applied))
    assert result.returncode == 1
    assert result.stderr.startswith("error: ")


# -- names read from the state become paths ------------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def live(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A state the examples were applied to, on each backend."""
    shutil.copytree(EXAMPLES, tmp_path / "webhooks.d")
    if request.param == "sqlite":
        url = sqlite_url(tmp_path / "state.db")
    else:
        url = request.getfixturevalue("postgres_url")
    applied = run_cli(["apply", "--auto-approve", "--actor", "t", "--state", url], tmp_path)
    assert applied.returncode == 0, applied.stderr
    return url


def _insert_row(url: str, organization: str, name: str) -> None:
    """A webhook row put into the state with SQL, as anyone who can write its database can."""
    value = spec("hook", "acme").canonical_json()
    row = (organization, name, value, value, "2026-01-01T00:00:00Z", "2026-01-01T00:00:00Z")
    columns = "organization, name, spec, applied_spec, created_at, updated_at"
    if url.startswith("sqlite:"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
            conn.execute(f"INSERT INTO webhooks ({columns}) VALUES (?, ?, ?, ?, ?, ?)", row)
        conn.close()
        return
    import psycopg

    from reconciler.store.postgres import split_url

    conninfo, schema, _ = split_url(url)
    with psycopg.connect(conninfo, autocommit=True, options=f"-c search_path={schema}") as conn:
        conn.execute(f"INSERT INTO webhooks ({columns}) VALUES (%s, %s, %s, %s, %s, %s)", row)


def _export_error(project: Path, url: str, folder: str = "out.d", *more: str) -> str:
    result = run_cli(["export", folder, "--state", url, *more], project)
    assert result.returncode == 1, result.stdout
    (line,) = result.stderr.splitlines()
    return line


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


@pytest.mark.parametrize(
    ("organization", "name", "field"),
    [
        ("../../escaped", "hook", "organization"),
        ("acme", "../../../escaped", "name"),
        ("acme", "sub/dir", "name"),
        ("/tmp", "hook", "organization"),
        ("..", "..", "organization and name"),
        ("acme", "hook\n", "name"),
        ("Acme Corp", "hook", "organization"),
    ],
)
def test_export_refuses_a_row_whose_names_are_not_names_and_writes_nothing(
    tmp_path: Path, live: str, organization: str, name: str, field: str
) -> None:
    _insert_row(live, organization, name)
    before = _files(tmp_path)
    line = _export_error(tmp_path, live)
    row = f"organization={organization!r} name={name!r}"
    assert line.startswith(f"error: cannot export: the live state holds the webhook row {row}: ")
    verb = "are" if " and " in field else "is"
    assert f"its {field} {verb} not valid (1 to 63 characters" in line
    assert line.endswith("; nothing was written")
    assert not (tmp_path / "out.d").exists()
    assert _files(tmp_path) == before  # nothing written, inside or out:
    assert not (tmp_path.parent / "escaped").exists()
    assert not (tmp_path.parent / "escaped.yaml").exists()


def test_export_names_every_bad_row(tmp_path: Path, live: str) -> None:
    _insert_row(live, "../up", "a")
    _insert_row(live, "acme", "../b")
    line = _export_error(tmp_path, live)
    assert "organization='../up' name='a'" in line and "organization='acme' name='../b'" in line
    assert not (tmp_path / "out.d").exists()


def test_export_refuses_a_path_that_leads_outside_its_folder(tmp_path: Path, live: str) -> None:
    # An organization folder in FOLDER that links elsewhere: the files would land there.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "out.d").mkdir()
    (tmp_path / "out.d" / "acme").symlink_to(elsewhere)
    line = _export_error(tmp_path, live, "out.d", "--force")
    assert "organization='acme' name='slack-new-rule-violation'" in line
    assert "leads outside out.d" in line
    assert list(elsewhere.iterdir()) == []
    assert list((tmp_path / "out.d").iterdir()) == [tmp_path / "out.d" / "acme"]


# -- into a folder that is not empty -------------------------------------------------------


def _tree(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): p.read_text(encoding="utf-8")
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_export_refuses_a_folder_that_is_not_empty_and_writes_nothing(applied: Path) -> None:
    shutil.copytree(applied / "webhooks.d", applied / "tree.d")
    (applied / "tree.d" / "acme" / "slack-new-rule-violation.yaml").rename(
        applied / "tree.d" / "acme" / "renamed.yaml"
    )
    before = _tree(applied / "tree.d")
    result = run_cli(["export", "tree.d"], applied, env(applied))
    assert result.returncode == 1
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: tree.d is not empty; nothing was written (--force writes into")
    assert _tree(applied / "tree.d") == before


def test_export_force_keeps_each_files_path_and_removes_the_stale_ones(applied: Path) -> None:
    """A renamed file keeps its name (no duplicate beside it), a file of a webhook
    the state no longer holds is removed and listed, a file that is not YAML stays:
    the tree validates and plans no change."""
    tree = applied / "tree.d"
    shutil.copytree(applied / "webhooks.d", tree)
    renamed = tree / "acme" / "renamed.yaml"
    original = (tree / "acme" / "slack-new-rule-violation.yaml").read_text(encoding="utf-8")
    (tree / "acme" / "slack-new-rule-violation.yaml").unlink()
    renamed.write_text("# a comment export does not keep\n" + original, encoding="utf-8")
    stale = tree / "acme" / "gone.yaml"
    stale.write_text(original.replace("name: slack-new-rule-violation", "name: gone"), "utf-8")
    (tree / "README.md").write_text("notes\n", encoding="utf-8")

    result = run_cli(["export", "tree.d", "--force"], applied, env(applied))

    assert result.returncode == 0, result.stderr
    expected = len(load_specs(applied / "webhooks.d"))
    assert result.stdout.splitlines() == [
        f"Exported {expected} webhooks and the shared list of variables to tree.d.",
        "removed tree.d/acme/gone.yaml (its webhook is not in the live state)",
    ]
    assert not stale.exists()
    assert not (tree / "acme" / "slack-new-rule-violation.yaml").exists()
    assert renamed.read_text(encoding="utf-8").startswith("name: slack-new-rule-violation\n")
    assert (tree / "README.md").read_text(encoding="utf-8") == "notes\n"
    validated = run_cli(["validate", "tree.d"], applied, env(applied))
    assert validated.returncode == 0, validated.stdout
    planned = run_cli(["plan", "tree.d", "--detailed-exitcode"], applied, env(applied))
    assert planned.returncode == 0, planned.stdout + planned.stderr
    assert "No changes" in planned.stdout


def test_export_force_with_org_touches_only_that_organizations_files(applied: Path) -> None:
    tree = applied / "tree.d"
    shutil.copytree(applied / "webhooks.d", tree)
    (tree / "globex" / "extra.yaml").write_text(
        "name: extra\nevent: new_rule_violation\nmethod: GET\nurl: https://x.example/\n", "utf-8"
    )
    (tree / "acme" / "extra.yaml").write_text(
        "name: extra\nevent: new_rule_violation\nmethod: GET\nurl: https://x.example/\n", "utf-8"
    )
    result = run_cli(
        ["export", "tree.d", "--force", "--org", "acme", "--format", "json"], applied, env(applied)
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["removed"] == ["acme/extra.yaml"]
    assert data["shared_env"] is None
    assert sorted(data["webhooks"]) == sorted(
        str(p.relative_to(tree)) for p in (tree / "acme").glob("*.yaml")
    )
    assert (tree / "globex" / "extra.yaml").exists()


def test_export_force_refuses_a_yaml_file_that_holds_no_definition(applied: Path) -> None:
    tree = applied / "tree.d"
    shutil.copytree(applied / "webhooks.d", tree)
    (tree / "acme" / "notes.yaml").write_text("- just\n- a list\n", encoding="utf-8")
    before = _tree(tree)
    result = run_cli(["export", "tree.d", "--force"], applied, env(applied))
    assert result.returncode == 1
    assert "tree.d/acme/notes.yaml" in result.stderr
    assert result.stderr.rstrip().endswith("nothing was written")
    assert _tree(tree) == before
