"""Every organization reaches only its own `${env:}` variables, and the shared list.

`validate` (so plan and apply) refuses a reference to another organization's
variable, or to the platform's own, at its line and column; the shared list lives
in webhooks.d/shared-env.yaml, which apply records in the state; and the
dispatcher refuses again at send time, whatever wrote the state.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers_state import (
    cli_env,
    definition,
    run_cli,
    write_definition,
)

from reconciler import envaccess
from reconciler.dispatch.ssrf import NetworkPolicy
from reconciler.loader import load_definitions

LOOPBACK_ALLOWED = NetworkPolicy.from_options(False, ["127.0.0.1/32"])
SHARED_MESSAGE = "acme's definitions may read ACME_* variables or the shared list in {where}"

# What the dispatcher's environment holds: every value here is a secret of someone.
ENV = {
    "ACME_TOKEN": "acme-own-token",
    "ACME_CORP_TOKEN": "acme-corp-secret-value",
    "GLOBEX_API_KEY": "globex-secret-value",
    "HOME": "/home/dispatcher-secret",
    "RECONCILER_STATE": "postgresql://user:state-password@db/state",
    "RELAY_TOKEN": "relay-shared-value",
    "SLACK_URL": "https://hooks.slack.com/services/nobodys-secret",
}


def problems(folder: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    monkeypatch.chdir(folder.parent)
    return [str(p) for p in load_definitions(Path(folder.name)).problems]


def shared_file(folder: Path, text: str) -> Path:
    path = folder / envaccess.SHARED_ENV_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# -- the rule -----------------------------------------------------------------------


def test_the_prefix_is_the_name_upper_cased_with_dashes_as_underscores() -> None:
    assert envaccess.prefix("acme") == "ACME_"
    assert envaccess.prefix("acme-corp") == "ACME_CORP_"
    assert envaccess.prefix("acme_corp") == "ACME_CORP_"
    assert envaccess.prefix("9lives") == "9LIVES_"


def test_the_longest_prefix_among_the_known_organizations_owns_a_variable() -> None:
    both = envaccess.EnvAccess(frozenset({"acme", "acme-corp"}))
    assert both.owners("ACME_CORP_TOKEN") == ["acme-corp"]
    assert both.owners("ACME_CORPORATE_TOKEN") == ["acme"]  # not ACME_CORP_ + ...
    assert both.owners("ACME_TOKEN") == ["acme"]
    assert both.owners("acme_token") == []  # names match case-sensitively
    assert both.refusal("acme", "ACME_CORP_TOKEN") is not None
    assert both.refusal("acme-corp", "ACME_CORP_TOKEN") is None
    alone = envaccess.EnvAccess(frozenset({"acme"}))
    assert alone.refusal("acme", "ACME_CORP_TOKEN") is None


def test_coinciding_prefixes_own_nothing() -> None:
    access = envaccess.EnvAccess(frozenset({"acme-corp", "acme_corp"}))
    assert access.collisions() == [["acme-corp", "acme_corp"]]
    for organization in ("acme-corp", "acme_corp"):
        why = access.refusal(organization, "ACME_CORP_TOKEN")
        assert why is not None and "acme-corp and acme_corp" in why


@pytest.mark.parametrize(
    "name", ["HOME", "PATH", "home", "RECONCILER_STATE", "LC_ALL", "AWS_SECRET_ACCESS_KEY"]
)
def test_the_platforms_own_variables_are_read_by_nobody_even_when_shared(name: str) -> None:
    access = envaccess.EnvAccess(frozenset({"acme"}), {name: "a reason"})
    assert "platform's own" in (access.refusal("acme", name) or "")
    assert envaccess.shared_name_problem(name, ["acme"]) is not None


def test_an_organization_whose_prefix_is_the_platforms_is_refused() -> None:
    assert envaccess.organization_problem("reconciler") is not None
    assert envaccess.organization_problem("reconciler-ops") is not None
    assert envaccess.organization_problem("acme") is None


def test_a_scoped_environment_refuses_on_lookup_and_on_membership() -> None:
    access = envaccess.EnvAccess(frozenset({"acme", "globex"}), {"RELAY_TOKEN": "relay"})
    env = access.scoped(ENV, "acme")
    assert env["ACME_TOKEN"] == "acme-own-token"
    assert env["RELAY_TOKEN"] == "relay-shared-value"
    assert sorted(env) == ["ACME_CORP_TOKEN", "ACME_TOKEN", "RELAY_TOKEN"]
    for name in ("GLOBEX_API_KEY", "HOME", "RECONCILER_STATE", "SLACK_URL"):
        with pytest.raises(envaccess.EnvRefused) as refused:
            _ = name in env
        assert name in str(refused.value)
        assert ENV[name] not in str(refused.value)


# -- validate -----------------------------------------------------------------------


CROSS = """\
name: leak
event: new_rule_violation
method: POST
url: https://collect.example.com/in?k=${env:GLOBEX_API_KEY}
headers:
  X-Also: ${env:HOME}
  X-Own: ${env:ACME_TOKEN}
query:
  k: "${env:GLOBEX_API_KEY}"
  escaped: "\\x24{env:RECONCILER_STATE}"
body:
  nested: ["${env:GLOBEX_API_KEY}"]
signing_secret: ${env:ACME_SIGNING} ${env:SLACK_URL}
"""


def test_validate_refuses_another_organizations_and_the_platforms_variables_where_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "webhooks.d"
    write_definition(folder, "acme", CROSS)
    write_definition(folder, "globex", definition("finops"))
    allowed = SHARED_MESSAGE.format(where="webhooks.d/shared-env.yaml")
    assert problems(folder, monkeypatch) == [
        "webhooks.d/acme/leak.yaml:4:6: url: ${env:GLOBEX_API_KEY} belongs to organization "
        f"globex; {allowed}",
        "webhooks.d/acme/leak.yaml:6:11: headers.X-Also: ${env:HOME} is the platform's own "
        f"(the dispatcher's environment), never read by a definition; {allowed}",
        "webhooks.d/acme/leak.yaml:9:6: query.k: ${env:GLOBEX_API_KEY} belongs to "
        f"organization globex; {allowed}",
        "webhooks.d/acme/leak.yaml:10:12: query.escaped: ${env:RECONCILER_STATE} is the "
        f"platform's own (the dispatcher's environment), never read by a definition; {allowed}",
        "webhooks.d/acme/leak.yaml:12:12: body.nested[0]: ${env:...} references are resolved "
        "only in url, header values, query values and signing_secret",
        "webhooks.d/acme/leak.yaml:12:12: body.nested[0]: ${env:GLOBEX_API_KEY} belongs to "
        f"organization globex; {allowed}",
        "webhooks.d/acme/leak.yaml:13:17: signing_secret: ${env:SLACK_URL} belongs to no "
        f"organization and is not on the shared list; {allowed}",
    ]


def test_validate_accepts_its_own_prefix_and_the_shared_list(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "webhooks.d"
    write_definition(
        folder,
        "acme",
        definition(
            "fine",
            url="${env:ACME_HOOK_URL}",
            headers={"Authorization": "Bearer ${env:ACME_TOKEN}", "X-Relay": "${env:RELAY_TOKEN}"},
            query={"relay": "${env:RELAY_TOKEN}"},
            signing_secret="${env:ACME_SIGNING}",
        ),
    )
    shared_file(folder, "shared:\n  RELAY_TOKEN: The relay every organization posts through.\n")
    assert problems(folder, monkeypatch) == []
    result = load_definitions(folder)
    assert result.shared_env == {"RELAY_TOKEN": "The relay every organization posts through."}
    assert [d.spec.name for d in result.definitions] == ["fine"]  # the list is no definition


def test_a_variable_of_a_longer_prefix_belongs_to_that_organization_once_it_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "webhooks.d"
    hook = write_definition(
        folder, "acme", definition("corp", headers={"X-Token": "${env:ACME_CORP_TOKEN}"})
    )
    assert problems(folder, monkeypatch) == []  # no acme-corp: ACME_CORP_TOKEN is acme's
    write_definition(folder, "acme-corp", definition("own", url="${env:ACME_CORP_URL}"))
    allowed = SHARED_MESSAGE.format(where="webhooks.d/shared-env.yaml")
    expected = [
        "webhooks.d/acme/corp.yaml:6:12: headers.X-Token: ${env:ACME_CORP_TOKEN} belongs to "
        f"organization acme-corp; {allowed}"
    ]
    assert problems(folder, monkeypatch) == expected
    # Validating acme's file alone (as pre-commit does) still knows acme-corp's folder.
    monkeypatch.chdir(tmp_path)
    alone = load_definitions(hook.relative_to(tmp_path))
    assert [str(p) for p in alone.problems] == expected


def test_two_organizations_with_the_same_prefix_are_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "webhooks.d"
    write_definition(folder, "acme-corp", definition("a"))
    write_definition(folder, "acme_corp", definition("b"))
    assert problems(folder, monkeypatch) == [
        "webhooks.d/acme-corp/a.yaml:1:7: organization acme-corp: its variables' prefix "
        "ACME_CORP_ is also organization acme_corp's; rename one of them, as two "
        "organizations never share variables",
        "webhooks.d/acme_corp/b.yaml:1:7: organization acme_corp: its variables' prefix "
        "ACME_CORP_ is also organization acme-corp's; rename one of them, as two "
        "organizations never share variables",
    ]


def test_an_organization_named_for_the_platforms_prefix_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "webhooks.d"
    write_definition(folder, "reconciler", definition("a"))
    assert problems(folder, monkeypatch) == [
        "webhooks.d/reconciler/a.yaml:1:7: organization reconciler: its variables "
        "(RECONCILER_*) are reserved for the platform itself; choose another name"
    ]


def test_the_shared_list_refuses_what_cannot_be_shared_at_its_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "webhooks.d"
    write_definition(folder, "globex", definition("a"))
    shared_file(
        folder,
        "shared:\n"
        "  RELAY_TOKEN: The relay.\n"
        "  GLOBEX_API_KEY: handy\n"
        "  RECONCILER_STATE: handy\n"
        "  HOME: handy\n"
        "  NO_REASON:\n"
        "  bad-name: x\n"
        "extra: 1\n",
    )
    assert problems(folder, monkeypatch) == [
        "webhooks.d/shared-env.yaml:3:3: shared.GLOBEX_API_KEY: GLOBEX_API_KEY belongs to "
        "organization globex (prefix GLOBEX_); a shared variable carries no organization's "
        "prefix",
        "webhooks.d/shared-env.yaml:4:3: shared.RECONCILER_STATE: RECONCILER_STATE is the "
        "platform's own (the dispatcher's environment) and is never shared",
        "webhooks.d/shared-env.yaml:5:3: shared.HOME: HOME is the platform's own (the "
        "dispatcher's environment) and is never shared",
        "webhooks.d/shared-env.yaml:6:13: shared.NO_REASON: give the reason it is shared, "
        "as text (got nothing (null))",
        "webhooks.d/shared-env.yaml:7:3: shared.bad-name: 'bad-name' is not a variable name "
        "(letters, digits and _, not first a digit)",
        "webhooks.d/shared-env.yaml:8:1: unknown field 'extra' (known: shared)",
    ]
    assert load_definitions(folder).shared_env == {"RELAY_TOKEN": "The relay."}


def test_the_cli_validate_exits_1_and_prints_the_located_error(tmp_path: Path) -> None:
    folder = tmp_path / "webhooks.d"
    write_definition(folder, "acme", definition("x", query={"k": "${env:GLOBEX_API_KEY}"}))
    write_definition(folder, "globex", definition("y"))
    result = run_cli(["validate"], cwd=tmp_path)
    assert result.returncode == 1
    assert result.stdout.splitlines()[0] == (
        "webhooks.d/acme/x.yaml:10:6: query.k: ${env:GLOBEX_API_KEY} belongs to organization "
        "globex; acme's definitions may read ACME_* variables or the shared list in "
        "webhooks.d/shared-env.yaml"
    )


def test_render_refuses_a_definition_reading_another_organizations_variable(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "webhooks.d"
    write_definition(folder, "acme", definition("x", headers={"X-K": "${env:GLOBEX_API_KEY}"}))
    write_definition(folder, "globex", definition("y"))
    result = run_cli(["render", "x", "--org", "acme"], cwd=tmp_path, env=cli_env(**ENV))
    assert result.returncode == 1
    assert result.stdout == ""
    assert "webhooks.d/acme/x.yaml:6:8: headers.X-K: ${env:GLOBEX_API_KEY} belongs to" in (
        result.stderr
    )
    assert "globex-secret-value" not in result.stderr
