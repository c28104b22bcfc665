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

from reconciler import __version__
from reconciler.envaccess import SHARED_ENV_FILE, prefix
from reconciler.errors import ScaffoldError
from reconciler.plan_report import MARKDOWN_MARKER
from reconciler.schema import webhook_schema_text

# Where this project's pre-commit hook (.pre-commit-hooks.yaml) is published.
HOOK_REPOSITORY = "https://github.com/acme-corp/reconciler"
HOOK_REV = f"v{__version__}"
DEFAULT_ORGANIZATION = "example"
DEFAULT_ADMINS = "@acme-corp/webhook-admins"
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
INSTALL_RELEASE = template("install-release.yml", version=__version__)

# The install step of this project's repository, which is reconciler's own source.
INSTALL_SOURCE = template("install-source.yml")


def workflows(install: str = INSTALL_RELEASE, admins: str = DEFAULT_ADMINS) -> dict[str, str]:
    """The two workflows, by file name, with `install` as their install step and
    `admins` as the reviewers the apply workflow's comment suggests."""
    return {
        "webhooks-plan.yml": template("webhooks-plan.yml").replace(_INSTALL_LINE, install),
        "webhooks-apply.yml": template("webhooks-apply.yml", admins=admins).replace(
            _INSTALL_LINE, install
        ),
    }


def codeowners(organization: str, admins: str) -> str:
    team = _organization_team(organization, admins)
    folders = [
        ("/webhooks.d/", admins),
        (f"/webhooks.d/{organization}/", f"{team} {admins}"),
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

    return (
        "# Only admins set up webhooks: a change to a definition needs the approval of\n"
        f'# {admins} (turn on "Require review from Code Owners" in\n'
        "# the branch protection of main). An organization's own admins review its folder\n"
        "# too; the last matching line wins, so each organization's line names the webhook\n"
        "# admins again. Add one such line per organization folder. The shared list of\n"
        "# variables is the webhook admins' alone: no organization's admins approve it.\n"
        + lines(folders)
        + "\n# What runs plan and apply, and who reviews: admins only.\n"
        + lines(tooling)
    )


def _organization_team(organization: str, admins: str) -> str:
    """@acme-corp/webhook-admins and acme -> @acme-corp/acme-admins."""
    owner = admins.split("/", 1)[0] if "/" in admins else admins
    return f"{owner}/{organization}-admins"


def example_definition(organization: str) -> str:
    own = prefix(organization)  # its own variables: ${env:ACME_SLACK_URL}
    return template(
        "example-definition.yaml",
        organization=organization,
        variable=own + "SLACK_URL",
        prefix=own,
    )


SHARED_ENV = template("shared-env.yaml")

PRE_COMMIT_CONFIG = template("pre-commit-config.yaml", repository=HOOK_REPOSITORY, rev=HOOK_REV)

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


def scaffold(organization: str = DEFAULT_ORGANIZATION, admins: str = DEFAULT_ADMINS) -> Scaffold:
    files = {
        f"webhooks.d/{organization}/example.yaml": example_definition(organization),
        f"webhooks.d/{SHARED_ENV_FILE}": SHARED_ENV,
        "schemas/webhook.schema.json": webhook_schema_text(),
        ".github/CODEOWNERS": codeowners(organization, admins),
        ".pre-commit-config.yaml": PRE_COMMIT_CONFIG,
        ".gitignore": GITIGNORE,
    }
    for name, text in workflows(admins=admins).items():
        files[f".github/workflows/{name}"] = text
    return Scaffold(files)
