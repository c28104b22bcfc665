"""How a definition is shown: every literal credential masked, by the one rule in
credentials.py that `validate` also enforces.

References (`${env:NAME}`) and `{{placeholders}}` are shown as written: they name a
secret without holding it. Literal credentials are masked.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from reconciler import credentials

MASK = credentials.MASK


def is_sensitive_header(name: str) -> bool:
    return credentials.credential_name(name, "header")


def secret_bearing_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return credentials.secret_path_service(parts.hostname or "", parts.path) is not None


def mask_value(value: str) -> str:
    """A credential-named value: references stay readable; anything literal becomes ****."""
    return str(credentials.mask({"headers": {"Authorization": value}})["headers"]["Authorization"])


def mask_header(name: str, value: str) -> str:
    """A header value as it may be shown: masked by its name and by its content."""
    return str(credentials.mask({"headers": {name: value}})["headers"][name])


def mask_url(url: str) -> str:
    """Hide user info, secret query values, secret-bearing paths and token-like parts."""
    return str(credentials.mask({"url": url})["url"])


def mask_text(text: str) -> str:
    """Free text that may quote a URL or a token (an attempt's error), fit to show."""
    return credentials.mask_text(text)


def mask_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """A canonical definition fit to show: in plans, history, the audit log, logs and errors."""
    return credentials.mask(spec)


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
