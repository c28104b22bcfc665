"""Which `${env:NAME}` variables a definition may read: its organization's, and the
shared list's; never another organization's, never the platform's own.

The rule, checked by `validate` and again by the dispatcher when it resolves a
reference:

1. A platform name (RESERVED_NAMES, or starting with one of RESERVED_PREFIXES,
   e.g. RECONCILER_STATE, HOME, PATH) is read by no definition, whatever else says.
2. An organization's variables start with its prefix: its name upper-cased, `-`
   as `_`, then `_` (acme -> ACME_, acme-corp -> ACME_CORP_). Among the known
   organizations, the one with the longest prefix a name starts with owns it, so
   ACME_CORP_TOKEN is acme-corp's once acme-corp exists, never acme's. Two
   organizations with the same prefix (acme-corp and acme_corp) own nothing
   together: their names are refused until one is renamed.
3. A name no organization owns is read by every organization when it is on the
   shared list (webhooks.d/shared-env.yaml, kept by the platform's admins), and
   by none otherwise.

Names match case-sensitively; the platform's names are matched ignoring case.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from reconciler import templates
from reconciler.render import RenderError

SHARED_ENV_FILE = "shared-env.yaml"
SHARED_ENV_SHOWN = f"webhooks.d/{SHARED_ENV_FILE}"
# The organization the audit log files shared-list changes under: not a valid
# organization name (it has a dot), so it never names a tenant.
SHARED_ENV_SCOPE = SHARED_ENV_FILE

# The dispatcher's own environment: what a process, a shell, a container or a CI
# runner sets, and where the platform keeps its own credentials.
RESERVED_NAMES = frozenset(
    {
        "HOME",
        "PATH",
        "USER",
        "LOGNAME",
        "SHELL",
        "PWD",
        "OLDPWD",
        "HOSTNAME",
        "LANG",
        "LANGUAGE",
        "TERM",
        "TZ",
        "TMPDIR",
        "TMP",
        "TEMP",
        "MAIL",
        "EDITOR",
        "DISPLAY",
        "SHLVL",
        "_",
        "CI",
        "NO_COLOR",
        "VIRTUAL_ENV",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "NO_PROXY",
        "ALL_PROXY",
        "DATABASE_URL",
    }
)
RESERVED_PREFIXES = (
    "RECONCILER_",
    "LC_",
    "XDG_",
    "SSH_",
    "GIT_",
    "GITHUB_",
    "RUNNER_",
    "PYTHON",
    "PIP_",
    "LD_",
    "DYLD_",
    "SSL_",
    "REQUESTS_",
    "CURL_",
    "KUBERNETES_",
    "DOCKER_",
    "AWS_",
    "AZURE_",
    "GOOGLE_",
    "PG",
)

_SHARED_NAME = re.compile(templates.ENV_NAME)


def prefix(organization: str) -> str:
    """acme -> ACME_, acme-corp -> ACME_CORP_."""
    return organization.upper().replace("-", "_") + "_"


def reserved(name: str) -> bool:
    upper = name.upper()
    return upper in RESERVED_NAMES or upper.startswith(RESERVED_PREFIXES)


class EnvRefused(RenderError):
    """A definition refers to a variable its organization may not read; the message
    names the variable, never a value."""


@dataclass(frozen=True)
class EnvAccess:
    """The organizations known (the files at validate time, the live state at send
    time) and the shared list (name -> reason), and what they allow."""

    organizations: frozenset[str]
    shared: Mapping[str, str] = field(default_factory=dict)
    shared_where: str = SHARED_ENV_SHOWN  # how the shared list is named in messages

    def __post_init__(self) -> None:
        owners: dict[str, list[str]] = {}
        for organization in sorted(self.organizations):
            owners.setdefault(prefix(organization), []).append(organization)
        object.__setattr__(self, "_owners", owners)
        object.__setattr__(self, "_verdicts", {})

    def collisions(self) -> list[list[str]]:
        """Organizations that share one prefix, each group sorted."""
        owners: dict[str, list[str]] = self._owners  # type: ignore[attr-defined]
        return [orgs for _prefix, orgs in sorted(owners.items()) if len(orgs) > 1]

    def owners(self, name: str) -> list[str]:
        """The organizations with the longest prefix `name` starts with (usually one;
        several when their prefixes coincide; none when no prefix fits)."""
        owners: dict[str, list[str]] = self._owners  # type: ignore[attr-defined]
        end = name.rfind("_")
        while end > 0:
            found = owners.get(name[: end + 1])
            if found:
                return found
            end = name.rfind("_", 0, end)
        return []

    def refusal(self, organization: str, name: str) -> str | None:
        """Why `organization`'s definitions may not read `name`, or None when they may."""
        cache: dict[tuple[str, str], str | None] = self._verdicts  # type: ignore[attr-defined]
        key = (organization, name)
        if key not in cache:
            if len(cache) > 10_000:
                cache.clear()
            cache[key] = self._refusal(organization, name)
        return cache[key]

    def _refusal(self, organization: str, name: str) -> str | None:
        owners = [] if reserved(name) else self.owners(name)
        if not reserved(name) and (
            owners == [organization] or (not owners and name in self.shared)
        ):
            return None
        ref = "${env:%s}" % name
        allowed = (
            f"{organization}'s definitions may read {prefix(organization)}* variables "
            f"or the shared list in {self.shared_where}"
        )
        if reserved(name):
            return (
                f"{ref} is the platform's own (the dispatcher's environment), never read "
                f"by a definition; {allowed}"
            )
        if len(owners) > 1:
            return (
                f"{ref} is claimed by organizations {' and '.join(owners)}, whose variables "
                f"share the prefix {prefix(owners[0])}; rename one of them; {allowed}"
            )
        if owners:
            return f"{ref} belongs to organization {owners[0]}; {allowed}"
        return f"{ref} belongs to no organization and is not on the shared list; {allowed}"

    def scoped(self, env: Mapping[str, str], organization: str) -> ScopedEnv:
        return ScopedEnv(env, self, organization)


class ScopedEnv(Mapping[str, str]):
    """The environment as one organization's definitions see it: reading a variable
    they may not read raises EnvRefused (not KeyError, so `in` raises it too)."""

    def __init__(self, env: Mapping[str, str], access: EnvAccess, organization: str) -> None:
        self._env = env
        self._access = access
        self._organization = organization

    def __getitem__(self, name: str) -> str:
        why = self._access.refusal(self._organization, name)
        if why is not None:
            raise EnvRefused(f"not sent: {why}")
        return self._env[name]

    def __iter__(self) -> Iterator[str]:
        return (name for name in self._env if self._allowed(name))

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def _allowed(self, name: str) -> bool:
        return self._access.refusal(self._organization, name) is None


def shared_name_problem(name: str, organizations: Iterable[str]) -> str | None:
    """Why `name` cannot be on the shared list, or None when it can."""
    if not _SHARED_NAME.fullmatch(name):
        return f"{name!r} is not a variable name (letters, digits and _, not first a digit)"
    if reserved(name):
        return f"{name} is the platform's own (the dispatcher's environment) and is never shared"
    owners = EnvAccess(frozenset(organizations)).owners(name)
    if owners:
        return (
            f"{name} belongs to organization {owners[0]} (prefix {prefix(owners[0])}); "
            "a shared variable carries no organization's prefix"
        )
    return None


def organization_problem(organization: str) -> str | None:
    """Why an organization's name cannot be used, or None: every variable its prefix
    gives would be the platform's own."""
    if reserved(prefix(organization)):
        return (
            f"organization {organization}: its variables ({prefix(organization)}*) are "
            "reserved for the platform itself; choose another name"
        )
    return None
