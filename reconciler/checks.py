"""Rules that look at a whole definition, beyond what the model's types say.

Each finding carries the path of the field it is about, so the loader can point
at the line and column where that field is written.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from reconciler import templates
from reconciler.dispatch.signing import SigningSecretError, secret_key
from reconciler.model import METHODS_WITH_BODY, WebhookSpec
from reconciler.secrets import is_sensitive_header, secret_bearing_url

Loc = tuple[str | int, ...]

_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_RESERVED_HEADERS = frozenset({"webhook-id", "webhook-timestamp", "webhook-signature", "host"})


@dataclass(frozen=True)
class Finding:
    loc: Loc
    message: str
    severity: Literal["error", "warning"] = "error"
    at_key: bool = False


def check_spec(spec: WebhookSpec, *, check_env: bool = False) -> list[Finding]:
    findings: list[Finding] = []
    findings += _check_body(spec)
    findings += _check_url(spec.url)
    findings += _check_headers(spec.headers)
    for key, value in spec.query.items():
        if "{{" in key and templates.placeholder_names(key):
            findings.append(
                Finding(
                    ("query", key),
                    f"query: placeholders are substituted into values only, not the key {key!r}",
                    at_key=True,
                )
            )
        findings += _check_template(("query", key), value, placeholders=True, env=True)
    if spec.signing_secret is not None:
        findings += _check_signing_secret(spec.signing_secret)
    if check_env:
        findings += _check_env_set(spec)
        findings += _check_signing_secret_values(spec)
    return findings


def _check_body(spec: WebhookSpec) -> Iterator[Finding]:
    if spec.body is None:
        return
    if spec.method not in METHODS_WITH_BODY:
        yield Finding(
            ("body",),
            f"body is not allowed with {spec.method.value}: {spec.method.value} carries "
            "data in query (a body is for POST, PUT and PATCH)",
            at_key=True,
        )
        return
    strings: list[tuple[Loc, str, bool]] = []
    _templated_strings(spec.body, ("body",), strings)
    for loc, text, is_key in strings:
        if is_key and templates.placeholder_names(text):
            yield Finding(
                loc,
                f"{dotted(loc)}: placeholders are substituted into values only, not keys",
                at_key=True,
            )
            continue
        yield from _check_template(loc, text, placeholders=True, env=False)


def _templated_strings(value: Any, loc: Loc, out: list[tuple[Loc, str, bool]]) -> None:
    """Every key and string value (loc, text, is_key) in `value`, depth first, that holds
    "{{" or "${" (or, a value, "}}"): the only text in which _check_template can find
    anything."""
    if isinstance(value, str):
        if "{{" in value or "${" in value or "}}" in value:
            out.append((loc, value, False))
    elif isinstance(value, dict):
        for key, item in value.items():
            if "{{" in key or "${" in key:
                out.append((loc + (key,), key, True))
            if isinstance(item, str):
                if "{{" in item or "${" in item or "}}" in item:
                    out.append((loc + (key,), item, False))
            elif isinstance(item, dict | list):
                _templated_strings(item, loc + (key,), out)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _templated_strings(item, loc + (index,), out)


def _check_template(loc: Loc, text: str, *, placeholders: bool, env: bool) -> Iterator[Finding]:
    # Placeholders need "{{", references (and malformed ones) "${": most text has neither.
    if placeholders and ("{{" in text or "}}" in text):
        yield from _check_unbalanced(loc, text)
    if "{{" in text:
        if placeholders:
            unknown = templates.unknown_placeholders(text)
            if unknown:
                names = ", ".join("{{%s}}" % name for name in unknown)
                yield Finding(
                    loc,
                    f"{dotted(loc)}: unknown placeholder {names}; valid: "
                    f"{templates.PLACEHOLDER_HELP}",
                )
        elif templates.placeholder_names(text):
            yield Finding(loc, f"{dotted(loc)}: placeholders are not substituted here")
    if "${" in text:
        bad = templates.malformed_env_ref(text)
        if bad is not None:
            yield Finding(
                loc, f"{dotted(loc)}: malformed secret reference {bad!r}; write ${{env:NAME}}"
            )
        elif not env and templates.env_names(text):
            yield Finding(
                loc,
                f"{dotted(loc)}: ${{env:...}} references are resolved only in url, header "
                "values, query values and signing_secret",
            )


def _check_unbalanced(loc: Loc, text: str) -> Iterator[Finding]:
    """A placeholder with a brace too few is sent as written, never substituted."""
    for written, name in templates.unbalanced_placeholders(text):
        if name in templates.PLACEHOLDERS:
            fix = "write {{%s}}" % name
        else:
            fix = f"valid placeholders: {templates.PLACEHOLDER_HELP}"
        yield Finding(loc, f'{dotted(loc)}: unbalanced placeholder "{written}": {fix}')


def _check_url(url: str) -> Iterator[Finding]:
    yield from _check_template(("url",), url, placeholders=True, env=True)
    if "${" in url and templates.env_names(url):
        return
    if secret_bearing_url(url):
        yield Finding(
            ("url",),
            "url: this endpoint's URL is itself a secret; keep it out of git with ${env:NAME}",
            "warning",
        )
    if "{{" in url:  # else substitute() would return it unchanged
        url = templates.substitute(url, lambda _n: "x", None)
    host = urlsplit(url).hostname or ""
    address = None
    # Only these can parse as an address: an IPv6 one has colons, an IPv4 one ends in
    # a digit. Anything else would raise ValueError, which costs more than this test.
    if ":" in host or host[-1:].isdigit():
        with contextlib.suppress(ValueError):
            address = ipaddress.ip_address(host)
    if address is None:
        if host == "localhost" or host.endswith(".localhost"):
            yield Finding(
                ("url",),
                f"url: {host} is a loopback host; the dispatcher refuses it unless the "
                "deployment allows private networks (--allow-private-networks)",
                "warning",
            )
        return
    if not address.is_global:
        yield Finding(
            ("url",),
            f"url: {host} is not a public address; the dispatcher refuses it unless the "
            "deployment allows it (--allow-private-networks or --allow-cidr)",
            "warning",
        )


def _check_headers(headers: Mapping[str, str]) -> Iterator[Finding]:
    seen: dict[str, str] = {}
    for name, value in headers.items():
        found = list(_check_header(name, value, seen))
        yield from found
        # A credential warning only matters once the header itself is right.
        if not found and is_sensitive_header(name) and value and not templates.env_names(value):
            yield Finding(
                ("headers", name),
                f"headers.{name}: a credential written in git; use ${{env:NAME}}",
                "warning",
            )


def _check_header(name: str, value: str, seen: dict[str, str]) -> Iterator[Finding]:
    loc: Loc = ("headers", name)
    if not _HEADER_NAME.match(name):
        yield Finding(loc, f"headers: {name!r} is not a valid header name", at_key=True)
    lowered = name.lower()
    if lowered in seen:
        yield Finding(
            loc,
            f"headers: {name!r} repeats {seen[lowered]!r} (header names ignore case)",
            at_key=True,
        )
    seen[lowered] = name
    if lowered in _RESERVED_HEADERS:
        yield Finding(
            loc, f"headers: {name} is set by the dispatcher and cannot be given", at_key=True
        )
    if "\r" in value or "\n" in value:
        yield Finding(loc, f"headers.{name}: value must not contain a line break")
        return
    yield from _check_template(loc, value, placeholders=False, env=True)


def _check_signing_secret(secret: str) -> Iterator[Finding]:
    loc: Loc = ("signing_secret",)
    parts = secret.split()
    if not parts or not all(templates.is_env_ref(part) for part in parts):
        yield Finding(
            loc,
            "signing_secret: must be ${env:NAME} (several, space-separated, during a "
            "rotation); a secret never sits in git",
        )


def _check_env_set(spec: WebhookSpec) -> Iterator[Finding]:
    fields: list[tuple[Loc, str]] = [(("url",), spec.url)]
    fields += [(("headers", k), v) for k, v in spec.headers.items()]
    fields += [(("query", k), v) for k, v in spec.query.items()]
    if spec.signing_secret:
        fields.append((("signing_secret",), spec.signing_secret))
    for loc, text in fields:
        for name in templates.env_names(text):
            if name not in os.environ:
                yield Finding(loc, f"{dotted(loc)}: environment variable {name} is not set")


def _check_signing_secret_values(spec: WebhookSpec) -> Iterator[Finding]:
    """Each set variable of signing_secret holds what the dispatcher can sign with
    (whsec_ and base64): any other value fails every delivery unsent. The value
    itself is never shown."""
    if not spec.signing_secret:
        return
    for name in templates.env_names(spec.signing_secret):
        value = os.environ.get(name)
        if value is None:
            continue  # reported as unset
        try:
            secret_key(value)
        except SigningSecretError:
            yield Finding(
                ("signing_secret",),
                f"signing_secret: environment variable {name} does not hold a signing "
                "secret (whsec_ and base64): every delivery of this webhook would fail unsent",
            )


def dotted(loc: Loc) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out
