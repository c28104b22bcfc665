"""The two kinds of reference a definition may hold, and how they are found.

`{{placeholder}}` takes a value of the event at send time; `${env:NAME}` takes a
secret from the dispatcher's environment at send time. Both are found in one
pass, so a value substituted for one is never scanned for the other.
"""

from __future__ import annotations

import re
from collections.abc import Callable

PLACEHOLDERS: tuple[str, ...] = (
    "time",
    "name",
    "description",
    "event",
    "organization",
    "event_id",
    "webhook",
)
PLACEHOLDER_HELP = ", ".join("{{%s}}" % p for p in PLACEHOLDERS)

ENV_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
ENV_REF = re.compile(r"\$\{env:(" + ENV_NAME + r")\}")
ENV_REF_FULL = re.compile(r"\$\{env:" + ENV_NAME + r"\}")
_TOKEN = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}|\$\{env:(" + ENV_NAME + r")\}")
_PLACEHOLDER = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")
_DOLLAR_BRACE = re.compile(r"\$\{")
# A placeholder with one of its pairs of braces broken. A well-formed placeholder is
# matched first and passed over; then "{{name" not closed by "}}" ({{time}, {{ time },
# {{time), and "name}}" not opened by "{{": after a single "{" ({time}}), or a
# placeholder's own name (time}}). A "}}" after any other word ({"a": {"b": true}})
# and "{{" before no name are text.
_PLACEHOLDER_LIKE = r"[A-Za-z_][A-Za-z0-9_]*"
_KNOWN = "|".join(PLACEHOLDERS)
_UNBALANCED = re.compile(
    r"\{\{\s*[^{}]*?\s*\}\}"
    r"|\{\{\s*(?P<open>" + _PLACEHOLDER_LIKE + r")(?:\s*\})?"
    r"|\{\s*(?P<close>" + _PLACEHOLDER_LIKE + r")\s*\}\}"
    r"|(?<![A-Za-z0-9_])(?P<bare>" + _KNOWN + r")\s*\}\}"
)


def placeholder_names(text: str) -> list[str]:
    return _PLACEHOLDER.findall(text)


def unknown_placeholders(text: str) -> list[str]:
    return [name for name in _PLACEHOLDER.findall(text) if name not in PLACEHOLDERS]


def unbalanced_placeholders(text: str) -> list[tuple[str, str]]:
    """Each placeholder in `text` written with a brace too few, as (what is written,
    the name it holds): `{{time}` gives ("{{time}", "time"). Sent as written, never
    substituted."""
    found = []
    for match in _UNBALANCED.finditer(text):
        name = match.group("open") or match.group("close") or match.group("bare")
        if name is not None:
            found.append((match.group(0), name))
    return found


def env_names(text: str) -> list[str]:
    return ENV_REF.findall(text)


def malformed_env_ref(text: str) -> str | None:
    """The first `${...}` that is not a well-formed `${env:NAME}`, if any."""
    for match in _DOLLAR_BRACE.finditer(text):
        if not ENV_REF_FULL.match(text, match.start()):
            end = text.find("}", match.start())
            return text[match.start() : end + 1 if end != -1 else len(text)]
    return None


def is_env_ref(text: str) -> bool:
    return ENV_REF_FULL.fullmatch(text) is not None


def has_references(text: str) -> bool:
    """Whether substitute() could change `text`: it holds a placeholder or an env reference."""
    return _TOKEN.search(text) is not None


def has_placeholders(text: str) -> bool:
    """Whether substitute() with placeholders only (env=None) could change `text`."""
    return any(match.group(1) is not None for match in _TOKEN.finditer(text))


def substitute(
    text: str,
    placeholder: Callable[[str], str] | None,
    env: Callable[[str], str] | None,
) -> str:
    """Replace placeholders and/or env references in one pass.

    A kind whose callable is None is left as written.
    """

    def replace(match: re.Match[str]) -> str:
        name, env_name = match.group(1), match.group(2)
        if env_name is not None:
            return env(env_name) if env is not None else match.group(0)
        return placeholder(name) if placeholder is not None else match.group(0)

    return _TOKEN.sub(replace, text)
