"""What counts as secret, and how it is hidden wherever a definition is shown.

References (`${env:NAME}`) are shown as written: they name a secret without
holding it. Literal credentials are masked.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from reconciler import templates

MASK = "****"

_SENSITIVE_HEADER = re.compile(
    r"authorization|cookie|token|secret|password|passwd|api[-_]?key|signature|credential",
    re.IGNORECASE,
)
_SENSITIVE_PARAM = re.compile(
    r"token|secret|password|passwd|key|sig|signature|auth|credential|code", re.IGNORECASE
)
_AUTH_SCHEME = re.compile(r"\s*(?:(?:bearer|basic|token|bot)\s+)?", re.IGNORECASE)
# Hosts whose webhook URLs carry their credential in the path.
_SECRET_PATH_HOSTS = (
    "hooks.slack.com",
    "discord.com",
    "discordapp.com",
    "webhook.office.com",
    "outlook.office.com",
    "chat.googleapis.com",
)


def is_sensitive_header(name: str) -> bool:
    return bool(_SENSITIVE_HEADER.search(name))


def secret_bearing_url(url: str) -> bool:
    host = (urlsplit(url).hostname or "").lower()
    return any(host == h or host.endswith("." + h) for h in _SECRET_PATH_HOSTS)


def mask_value(value: str) -> str:
    """A value made only of references stays readable; anything literal becomes ****."""
    if templates.env_names(value) and _AUTH_SCHEME.fullmatch(templates.ENV_REF.sub("", value)):
        return value
    return MASK


def mask_url(url: str) -> str:
    """Hide passwords, secret query values and secret-bearing paths of literal URLs."""
    if templates.ENV_REF_FULL.fullmatch(url):
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK
    netloc = parts.netloc
    if parts.password:
        netloc = netloc.replace(":" + parts.password + "@", ":" + MASK + "@", 1)
    path = parts.path
    if secret_bearing_url(url) and path not in ("", "/"):
        path = "/" + MASK
    query = "&".join(_mask_pair(pair) for pair in parts.query.split("&") if pair)
    return urlunsplit((parts.scheme, netloc, path, query, parts.fragment))


def _mask_pair(pair: str) -> str:
    name, sep, value = pair.partition("=")
    if sep and _SENSITIVE_PARAM.search(name) and not templates.env_names(value):
        return f"{name}={MASK}"
    return pair


def mask_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """A canonical definition fit to show: in plans, history, logs and errors."""
    shown = dict(spec)
    if "url" in shown:
        shown["url"] = mask_url(shown["url"])
    if "headers" in shown:
        shown["headers"] = {
            k: mask_value(v) if is_sensitive_header(k) else v for k, v in shown["headers"].items()
        }
    if "query" in shown:
        shown["query"] = {
            k: mask_value(v) if _SENSITIVE_PARAM.search(k) else v for k, v in shown["query"].items()
        }
    if "signing_secret" in shown:
        shown["signing_secret"] = mask_value(shown["signing_secret"])
    return shown


def mask_at(path: tuple[str | int, ...], value: Any) -> Any:
    """Mask a value found at `path` inside a definition, as mask_spec would."""
    if not path or not isinstance(path[0], str):
        return value
    wrapped: Any = value
    for part in reversed(path[1:]):
        wrapped = {part: wrapped} if isinstance(part, str) else [wrapped]
    masked: Any = mask_spec({path[0]: wrapped})[path[0]]
    for part in path[1:]:
        masked = masked[part] if isinstance(part, str) else masked[0]
    return masked
