"""`reconciler init`: the files of a new definitions repository.

The two GitHub workflows here are also this project's own (.github/workflows/),
but for the step that installs reconciler: a test keeps them the same.
"""

from __future__ import annotations

from dataclasses import dataclass
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

# The install step of a definitions repository: the reconciler release it uses,
# pinned in git, so an upgrade is a reviewed pull request like any other change.
INSTALL_RELEASE = f"""\
      - name: Install reconciler
        # Any pip requirement: this release, a private index, a git URL.
        run: pip install "$RECONCILER_PACKAGE"
        env:
          RECONCILER_PACKAGE: reconciler[postgres]=={__version__}
"""

# The install step of this project's repository, which is reconciler's own source.
INSTALL_SOURCE = """\
      - name: Install reconciler
        # This repository is reconciler's source: its definitions are checked by it.
        run: pip install -e '.[postgres]'
"""

_PLAN = """\
# Checks the webhook definitions a pull request changes, and shows what applying
# them would do: one pull-request comment, updated in place, and the job summary.
# Needs the repository secret RECONCILER_STATE (the live state's URL).
name: webhooks plan

on:
  pull_request:
    paths:
      - "webhooks.d/**"

permissions:
  contents: read
  pull-requests: write

concurrency:
  group: webhooks-plan-${{ github.event.pull_request.number }}
  cancel-in-progress: true

jobs:
  plan:
    runs-on: ubuntu-latest
    timeout-minutes: 15
    env:
      RECONCILER_STATE: ${{ secrets.RECONCILER_STATE }}
      NO_COLOR: "1"
    steps:
      - uses: actions/checkout@v4
      - uses: actions/setup-python@v5
        with:
          python-version: "3.11"
      # @install@
      - name: Validate
        # Each problem becomes an annotation on its file and line; invalid fails the job.
        run: |
          if reconciler validate --format github; then
            exit 0
          fi
          {
            echo '<!-- reconciler-plan -->'
            echo '### reconciler plan'
            echo
            echo ':x: **The definitions are invalid: nothing was planned.**'
            echo 'Each problem is also annotated on its line under "Files changed".'
            echo
            echo '```'
            reconciler validate || true
            echo '```'
          } > plan-comment.md
          cat plan-comment.md >> "$GITHUB_STEP_SUMMARY"
          exit 1
      - name: Plan
        run: |
          if [ -z "$RECONCILER_STATE" ]; then
            echo "::error::No secret RECONCILER_STATE (forks get none): no state to plan against."
            exit 1
          fi
          reconciler plan --format markdown > plan-comment.md
          cat plan-comment.md >> "$GITHUB_STEP_SUMMARY"
      - name: Comment on the pull request
        if: ${{ !cancelled() && hashFiles('plan-comment.md') != '' }}
        uses: actions/github-script@v7
        with:
          script: |
            const fs = require('fs');
            const { owner, repo } = context.repo;
            const issue_number = context.issue.number;
            const marker = '<!-- reconciler-plan -->';
            let body = fs.readFileSync('plan-comment.md', 'utf8');
            if (!body.includes(marker)) body = `${marker}\\n${body}`;
            const limit = 60000;  // GitHub refuses comments over 65,536 characters
            if (body.length > limit) {
              const run = `${context.serverUrl}/${owner}/${repo}/actions/runs/${context.runId}`;
              const fence = '`'.repeat(3);
              body = `${body.slice(0, limit)}\\n${fence}\\n\\n` +
                `_Cut short: the whole plan is in the [job summary](${run})._`;
            }
            const comments = await github.paginate(github.rest.issues.listComments, {
              owner, repo, issue_number, per_page: 100,
            });
            const previous = comments.find(
              (c) => c.user?.type === 'Bot' && (c.body ?? '').includes(marker),
            );
            if (previous) {
              const comment_id = previous.id;
              await github.rest.issues.updateComment({ owner, repo, comment_id, body });
            } else {
              await github.rest.issues.createComment({ owner, repo, issue_number, body });
            }
"""

_APPLY = """\
# Applies the webhook definitions when they change on main. Applies never overlap
# and are never cancelled half-way. Deletes are allowed only when the merged pull
# request carried the label `allow-delete`.
# Needs the repository secret RECONCILER_STATE (the live state's URL).
name: webhooks apply

on:
  push:
    branches:
      - main
    paths:
      - "webhooks.d/**"

permissions:
  contents: read
  pull-requests: read

concurrency:
  group: webhooks-apply
  cancel-in-progress: false

jobs:
  apply:
    runs-on: ubuntu-latest
    timeout-minutes: 30
    # Instead of (or beside) the label: make every apply wait for an admin's approval.
    # Create the environment "webhooks" (Settings > Environments) with the required
    # reviewers @acme-corp/webhook-admins, keep RECONCILER_STATE as its secret, and
    # uncomment the next line.
    # environment: webhooks
    env:
      RECONCILER_STATE: ${{ secrets.RECONCILER_STATE }}
      NO_COLOR: "1"
    steps:
      - uses: actions/checkout@v4
        with:
          # The whole history: apply compares the commit with the live state's last
          # one, and refuses an older one (a re-run of an old pipeline).
          fetch-depth: 0
      - uses: actions/setup-python@v5
        with:
          python-version: "3.11"
      # @install@
      - name: Did the merged pull request allow deletes?
        id: labels
        env:
          GH_TOKEN: ${{ github.token }}
        run: |
          allow=$(gh api "repos/${GITHUB_REPOSITORY}/commits/${GITHUB_SHA}/pulls" \\
            --jq 'any(.[]; .merged_at != null and any(.labels[]; .name == "allow-delete"))')
          echo "allow_delete=${allow}" >> "$GITHUB_OUTPUT"
      - name: Apply
        env:
          ALLOW_DELETE: ${{ steps.labels.outputs.allow_delete }}
        run: |
          if [ -z "$RECONCILER_STATE" ]; then
            echo "::error::The secret RECONCILER_STATE is not set: no live state to apply to."
            exit 1
          fi
          flags=(--auto-approve)
          if [ "$ALLOW_DELETE" = "true" ]; then
            flags+=(--allow-delete)
          fi
          status=0
          reconciler apply "${flags[@]}" > apply.log 2>&1 || status=$?
          cat apply.log
          {
            echo '### reconciler apply'
            echo
            if [ "$status" -eq 0 ]; then
              echo ":white_check_mark: **Applied** ${GITHUB_SHA::7} for @${GITHUB_ACTOR}."
            else
              echo ":x: **Apply failed** (exit ${status}) for ${GITHUB_SHA::7}: see the log below."
            fi
            echo
            echo "Deletes allowed: ${ALLOW_DELETE:-false} (label allow-delete on the pull request)."
            echo
            echo '```'
            cat apply.log
            echo '```'
          } >> "$GITHUB_STEP_SUMMARY"
          exit "$status"
"""


def workflows(install: str = INSTALL_RELEASE) -> dict[str, str]:
    """The two workflows, by file name, with `install` as their install step."""
    return {
        "webhooks-plan.yml": _PLAN.replace(_INSTALL_LINE, install),
        "webhooks-apply.yml": _APPLY.replace(_INSTALL_LINE, install),
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
    own = prefix(organization)
    variable = own + "SLACK_URL"  # its own variables: ${env:ACME_SLACK_URL}
    return f"""\
# yaml-language-server: $schema=../../schemas/webhook.schema.json
# An example: each new rule violation of {organization}, posted to a Slack channel.
# The URL is a secret: git holds only ${{env:{variable}}}, which the dispatcher
# resolves when it sends. {organization}'s definitions read its own {own}* variables
# and those of webhooks.d/shared-env.yaml, nothing else.
# `reconciler render slack-new-rule-violation` shows the request.
name: slack-new-rule-violation
event: new_rule_violation
method: POST
url: ${{env:{variable}}}
description: Posts every new rule violation to a Slack channel.
headers:
  Content-Type: application/json
body:
  text: "The rule {{{{name}}}} was violated at: {{{{time}}}}. Description {{{{description}}}}."
rate_limit: 1/s
"""


SHARED_ENV = """\
# The variables every organization's definitions may read as ${env:NAME}, beside
# their own: an organization's variables carry its name as a prefix (acme reads
# ACME_*, acme-corp reads ACME_CORP_*), and nothing else unless it is listed here.
# Only the platform's admins change this file (see .github/CODEOWNERS). Give each
# name the reason it is shared. A name with an organization's prefix, or one of the
# platform's own (RECONCILER_*, HOME, PATH, ...), cannot be listed. `reconciler
# apply` records the list in the live state, where the dispatcher reads it.
shared: {}
#  RELAY_TOKEN: The company relay every organization's alerts go through.
"""


PRE_COMMIT_CONFIG = f"""\
# pre-commit (https://pre-commit.com): run `pre-commit install` once, then every commit
# that adds or changes a definition under webhooks.d/ validates the whole folder first
# (so a name used twice across files is caught, not only errors in the changed files).
repos:
  - repo: {HOOK_REPOSITORY}
    rev: {HOOK_REV}
    hooks:
      - id: reconciler-validate
"""

GITIGNORE = """\
# reconciler's local state (the SQLite default): never in git.
.reconciler/
"""


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
    for name, text in workflows().items():
        files[f".github/workflows/{name}"] = text
    return Scaffold(files)
