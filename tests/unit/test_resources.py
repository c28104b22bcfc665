"""The templates `reconciler init` writes (reconciler/resources/): valid YAML as
they sit in the package and once filled in, every marker filled, and all of them
shipped in the wheel. The workflows init writes pass the same checks as this
repository's own (tests/integration/test_gitops.py runs them on both)."""

from __future__ import annotations

import fnmatch
import re
import tomllib
from importlib import resources

import pytest
import yaml

from reconciler import scaffold
from tests.support.helpers_state import REPO

PACKAGE = REPO / "reconciler" / "resources"
TEMPLATES = sorted(p.name for p in PACKAGE.iterdir() if p.is_file() and p.suffix != ".py")
YAML_TEMPLATES = [name for name in TEMPLATES if name.endswith((".yml", ".yaml"))]


def test_every_template_is_package_data_of_the_wheel() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = pyproject["tool"]["setuptools"]["package-data"]["reconciler.resources"]
    for name in TEMPLATES:
        assert any(fnmatch.fnmatch(name, pattern) for pattern in patterns), (
            f"reconciler/resources/{name} is not in [tool.setuptools.package-data]"
        )
    assert set(TEMPLATES) >= {"webhooks-plan.yml", "webhooks-apply.yml", "gitignore"}


def test_templates_are_read_through_importlib_resources() -> None:
    for name in TEMPLATES:
        packaged = resources.files("reconciler.resources").joinpath(name)
        assert packaged.read_text(encoding="utf-8") == (PACKAGE / name).read_text(encoding="utf-8")


@pytest.mark.parametrize("name", YAML_TEMPLATES)
def test_each_yaml_template_is_valid_yaml_as_it_sits(name: str) -> None:
    text = (PACKAGE / name).read_text(encoding="utf-8")
    assert yaml.safe_load(text) is not None
    assert "\t" not in text
    assert all(line == line.rstrip() for line in text.splitlines()), f"{name}: trailing spaces"


def test_init_leaves_no_marker_unfilled() -> None:
    made = scaffold.scaffold("acme-corp", "@acme-corp/platform")
    for path, text in made.files.items():
        assert "# @install@" not in text, path
        assert not re.search(r"__(organization|variable|prefix|admins|requirement)__", text), path
        if path.endswith((".yml", ".yaml")):
            assert yaml.safe_load(text) is not None, path


def test_a_marker_the_template_lacks_is_refused() -> None:
    with pytest.raises(ValueError, match="has no __organization__"):
        scaffold.template("gitignore", organization="acme")


def test_the_install_steps_are_steps() -> None:
    for step in (scaffold.INSTALL_RELEASE, scaffold.INSTALL_SOURCE):
        (parsed,) = yaml.safe_load(step)
        assert parsed["name"] == "Install reconciler"
        assert parsed["run"].startswith("pip install ")
