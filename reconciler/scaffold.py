"""`reconciler init`: the files of a new definitions repository.

The files themselves are templates in reconciler/resources/; this module fills
them in. The two GitHub workflows are also this project's own
(.github/workflows/), but for the step that installs reconciler: a test keeps
them the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from reconciler import DISTRIBUTION, __version__
from reconciler.envaccess import SHARED_ENV_FILE, prefix
from reconciler.errors import ScaffoldError
from reconciler.plan_report import MARKDOWN_MARKER
from reconciler.schema import webhook_schema_text

DEFAULT_ORGANIZATION = "example"
# What a definitions repository installs: this release, the one that wrote its files
# (the installed distribution's version, read by importlib.metadata).
REQUIREMENT = f"{DISTRIBUTION}=={__version__}"
# The workflows also reach a PostgreSQL state.
WORKFLOW_REQUIREMENT = f"{DISTRIBUTION}[postgres]=={__version__}"
# The plan comment's first line, by which the workflow finds its comment to update.
MARKER = MARKDOWN_MARKER

_INSTALL_LINE = "      # @install@\n"


def template(name: str, **values: str) -> str:
    """The text of reconciler/resources/NAME with each `__key__` marker replaced
    by its value; a marker the file lacks is a bug here, so it raises."""
    text = resources.files("reconciler.resources").joinpath(name).read_text(encoding="utf-8")
    for key, value in values.items():
        marker = f"__{key}__"
        if marker not in text:
            raise ValueError(f"reconciler/resources/{name} has no {marker}")
        text = text.replace(marker, value)
    return text


# The install step of a definitions repository: the reconciler release it uses,
# pinned in git, so an upgrade is a reviewed pull request like any other change.
INSTALL_RELEASE = template("install-release.yml", requirement=WORKFLOW_REQUIREMENT)

# The install step of this project's repository, which is reconciler's own source.
INSTALL_SOURCE = template("install-source.yml")


def workflows(admins: str, install: str = INSTALL_RELEASE) -> dict[str, str]:
    """The two workflows, by file name, with `install` as their install step and
    `admins` as the reviewers the apply workflow's comment suggests."""
    return {
        "webhooks-plan.yml": template("webhooks-plan.yml").replace(_INSTALL_LINE, install),
        "webhooks-apply.yml": template("webhooks-apply.yml", admins=admins).replace(
            _INSTALL_LINE, install
        ),
    }


def codeowners(organization: str, admins: str) -> str:
    """CODEOWNERS naming no team but `admins`: an organization's own team is a
    commented line to fill in, since a guessed team name would be wrong."""
    folders = [
        ("/webhooks.d/", admins),
        # Which variables every organization may read: the platform's admins alone.
        (f"/webhooks.d/{SHARED_ENV_FILE}", admins),
    ]
    tooling = [
        ("/.github/workflows/", admins),
        ("/.github/CODEOWNERS", admins),
        ("/.pre-commit-config.yaml", admins),
        ("/schemas/", admins),
    ]
    width = max(len(pattern) for pattern, _ in folders + tooling) + 2

    def lines(entries: list[tuple[str, str]]) -> str:
        return "".join(f"{pattern.ljust(width)}{owners}\n" for pattern, owners in entries)

    folder = f"/webhooks.d/{organization}/"
    return (
        "# Only admins set up webhooks: a change to a definition needs the approval of\n"
        f'# {admins} (turn on "Require review from Code Owners" in\n'
        "# the branch protection of main). The shared list of variables is the webhook\n"
        "# admins' alone: no organization's admins approve it.\n"
        + lines(folders)
        + "\n# An organization's own admins may review its folder too: add one line per folder\n"
        "# naming a team that exists, and the webhook admins again (the last matching line\n"
        "# wins), e.g.:\n"
        f"# {folder.ljust(width - 2)}@<team> {admins}\n"
        + "\n# What runs plan and apply, and who reviews: admins only.\n"
        + lines(tooling)
    )


def example_definition(organization: str) -> str:
    own = prefix(organization)  # its own variables: ${env:ACME_SLACK_URL}
    return template(
        "example-definition.yaml",
        organization=organization,
        variable=own + "SLACK_URL",
        prefix=own,
    )


SHARED_ENV = template("shared-env.yaml")

PRE_COMMIT_CONFIG = template("pre-commit-config.yaml", requirement=REQUIREMENT)

GITIGNORE = template("gitignore")


@dataclass(frozen=True)
class Scaffold:
    files: dict[str, str]  # relative path -> content

    def write(self, folder: Path, *, force: bool = False) -> list[str]:
        """Write every file under `folder`; refuse, naming them, to overwrite any
        file that exists unless `force`. Returns the paths written."""
        existing = sorted(p for p in self.files if (folder / p).exists())
        if existing and not force:
            listed = "\n".join(f"  {folder / p}" for p in existing)
            files = "1 file exists" if len(existing) == 1 else f"{len(existing)} files exist"
            raise ScaffoldError(
                f"{files} already; nothing was written (--force overwrites):\n{listed}"
            )
        for relative, content in self.files.items():
            target = folder / relative
            if target.is_dir():
                raise ScaffoldError(f"{target} is a folder: cannot write a file there")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content, encoding="utf-8")
        return list(self.files)


def scaffold(organization: str, admins: str) -> Scaffold:
    files = {
        f"webhooks.d/{organization}/example.yaml": example_definition(organization),
        f"webhooks.d/{SHARED_ENV_FILE}": SHARED_ENV,
        "schemas/webhook.schema.json": webhook_schema_text(),
        ".github/CODEOWNERS": codeowners(organization, admins),
        ".pre-commit-config.yaml": PRE_COMMIT_CONFIG,
        ".gitignore": GITIGNORE,
    }
    for name, text in workflows(admins).items():
        files[f".github/workflows/{name}"] = text
    return Scaffold(files)
