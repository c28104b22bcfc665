"""Rules that look at a whole definition, beyond what the model's types say.

Each finding carries the path of the field it is about, so the loader can point
at the line and column where that field is written.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from reconciler import addresses, credentials, templates
from reconciler.model import METHODS_WITH_BODY, WebhookSpec
from reconciler.signing import SigningSecretError, secret_key

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
    findings += _check_literal_credentials(spec, findings)
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
    if "{{" in url:  # else substitute() would return it unchanged
        url = templates.substitute(url, lambda _n: "x", None)
    try:
        host = urlsplit(url).hostname or ""
    except ValueError:
        return  # the model has said why already
    for address in addresses.host_addresses(host):
        kind = addresses.address_refusal(address)
        if kind is None:
            continue
        means = "" if _as_written(host) == address else f" ({address})"
        yield Finding(
            ("url",),
            f"url: {host}{means} is not a public address ({kind}); the dispatcher refuses "
            "it unless the deployment allows it (--allow-private-networks or --allow-cidr)",
            "warning",
        )
        return
    if addresses.is_loopback_name(host):
        yield Finding(
            ("url",),
            f"url: {host} is a loopback host; the dispatcher refuses it unless the "
            "deployment allows private networks (--allow-private-networks)",
            "warning",
        )


def _as_written(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _check_headers(headers: Mapping[str, str]) -> Iterator[Finding]:
    seen: dict[str, str] = {}
    for name, value in headers.items():
        yield from _check_header(name, value, seen)


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


def _check_literal_credentials(spec: WebhookSpec, found: list[Finding]) -> Iterator[Finding]:
    """A credential in clear is refused (credentials.py holds the rule, which the masks
    share), unless allow_literal names its field; an allow_literal entry that names no
    such field is refused too, so the exceptions stay exact. A field already in error
    (a malformed reference, say) gets that one error."""
    organization, name = spec.key
    allowed = {credentials.allow_key(path) for path in spec.allow_literal}
    used: set[str] = set()
    seen: set[Loc] = {f.loc for f in found if f.severity == "error"}
    shown = {"url": spec.url, "headers": spec.headers, "query": spec.query, "body": spec.body}
    if spec.description is not None:
        shown["description"] = spec.description
    for hit in credentials.find(shown):
        key = credentials.allow_key(dotted(hit.loc))
        if key in allowed:
            used.add(key)
        elif hit.loc not in seen:
            seen.add(hit.loc)
            yield Finding(hit.loc, credentials.message(hit, organization, name))
    for index, path in enumerate(spec.allow_literal):
        if credentials.allow_key(path) not in used:
            yield Finding(
                ("allow_literal", index),
                f"allow_literal[{index}]: {path} holds no literal credential; remove it "
                "from the list",
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


def env_references(data: Any) -> list[tuple[Loc, str, bool]]:
    """Every `${env:NAME}` in a definition as read, in any field, key or value, at any
    depth: (where, NAME, whether it is in a key). What the organization rule checks:
    a reference the rule does not see must not be one the dispatcher could resolve."""
    found: list[tuple[Loc, str, bool]] = []

    def walk(value: Any, loc: Loc) -> None:
        if isinstance(value, str):
            if "${" in value:
                found.extend((loc, name, False) for name in templates.env_names(value))
        elif isinstance(value, dict):
            for key, item in value.items():
                if isinstance(key, str) and "${" in key:
                    found.extend((loc + (key,), name, True) for name in templates.env_names(key))
                walk(item, loc + (key,))
        elif isinstance(value, list):
            for index, item in enumerate(value):
                walk(item, loc + (index,))

    walk(data, ())
    return found
