"""The one rule for literal credentials: what `validate` refuses and every output masks.

A definition is scanned as its canonical JSON (the form stored, planned and written to
the audit log), so `validate` and the masks see the same fields at the same paths:

- **Names.** A header, query or body key whose name, cut into words (at `-`, `_`, `.`,
  spaces and case changes: `X-Vault-Tok`, `accessToken`, `APIKey`), holds a credential
  word (`auth`, `token`, `tok`, `secret`, `pass`, `pwd`, `key`, `sig`, `session`,
  `cookie`, `cred`, `access`, `bearer`, `jwt`, `private`, ...), or a word that contains a
  credential stem (`passwd`, `apikey`, `signature`, `csrftoken`, ...). A few common
  headers that name no secret are exempt (`Idempotency-Key`, `X-Event-Key`,
  `Access-Control-*`); query names also count `code` (Azure Functions keys).
  Its value is a literal credential unless it is made of `${env:NAME}` references and
  `{{placeholders}}` (text around a reference, such as `Bearer `, is fine).
- **URLs**, in `url` and anywhere else a URL is written: user info (a user or a
  password), the path of a webhook URL that holds its secret there (Slack, Discord,
  Microsoft Teams: host compared case-insensitively, without a trailing dot,
  IDNA-normalised), and query parameters named as above.
- **Shapes**: well-known token formats (`xoxb-`, `ghp_`, `sk-`, `AKIA`, `whsec_`, JWTs,
  private keys, ...) in any string, and random-looking runs of 20 or more
  base64/hex characters (mixed letters and digits, short word pieces, high Shannon
  entropy) in header, query, URL and body values. UUIDs are identifiers, not secrets.

A deliberate exception is named, field by field, in the definition's `allow_literal`;
the value is still masked wherever it is shown.
"""

from __future__ import annotations

import functools
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

MASK = "****"

Loc = tuple[str | int, ...]
Context = Literal["header", "query", "body"]

# -- names ------------------------------------------------------------------------------

# Whole words that name a credential.
_CREDENTIAL_WORDS = frozenset(
    {
        "auth", "authn", "authz", "token", "tokens", "tok", "tkn", "secret", "secrets",
        "pass", "pwd", "pw", "passwd", "password", "passwords", "passphrase", "key", "keys",
        "apikey", "sig", "sigs", "signature", "signatures", "session", "sess", "sessid",
        "cookie", "cookies", "credential", "credentials", "cred", "creds", "access",
        "bearer", "jwt", "private", "privatekey", "hmac", "otp", "csrf", "xsrf", "sas",
    }
)  # fmt: skip
# Stems that name a credential wherever they sit in a word (`csrftoken`, `xapikey`).
_CREDENTIAL_STEMS = (
    "token", "secret", "passw", "passphrase", "apikey", "credential", "signature",
    "session", "sessid", "cookie", "bearer", "privatekey", "accesskey", "authoriz",
    "authentic", "authtok", "jwt", "hmac",
)  # fmt: skip
_QUERY_WORDS = frozenset({"code"})  # Azure Functions: ?code=<function key>
_EXEMPT_NAMES = frozenset({"idempotency-key", "x-idempotency-key", "x-event-key"})
_EXEMPT_PREFIXES = ("access-control-",)
_WORD = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|[0-9]+")


def name_words(name: str) -> list[str]:
    """`X-Vault-Tok`: x, vault, tok; `APIKey`: api, key; `accessToken`: access, token."""
    return [word.lower() for word in _WORD.findall(name)]


@functools.lru_cache(maxsize=4096)
def credential_name(name: str, context: Context = "header") -> bool:
    """Whether a header, query or body key of this name carries a credential."""
    lowered = name.lower()
    if lowered in _EXEMPT_NAMES or lowered.startswith(_EXEMPT_PREFIXES):
        return False
    for word in name_words(name):
        if word in _CREDENTIAL_WORDS or (context == "query" and word in _QUERY_WORDS):
            return True
        if any(stem in word for stem in _CREDENTIAL_STEMS):
            return True
    return False


# -- references and placeholders ---------------------------------------------------------

_REFERENCE = re.compile(r"\$\{env:[A-Za-z_][A-Za-z0-9_]*\}|\{\{[^{}]*\}\}")
_HIDDEN = "\x01"  # stands in for each character of a reference, so spans keep their places


def _literal_view(text: str) -> str:
    if "${" not in text and "{{" not in text:
        return text
    return _REFERENCE.sub(lambda m: _HIDDEN * len(m.group()), text)


def _only_references(text: str) -> bool:
    """Whether a value is built on references (`Bearer ${env:TOKEN}`, `{{event_id}}`) or
    empty: then only its literal remainder is judged, by shape."""
    return not text.strip() or _HIDDEN in _literal_view(text)


# -- shapes ------------------------------------------------------------------------------

_SHAPE_LIST: tuple[tuple[str, str], ...] = (
    ("a Slack token", r"\bxox[abposre]-[A-Za-z0-9-]{8,}"),
    ("a Slack app token", r"\bxapp-[0-9]+-[A-Za-z0-9-]{8,}"),
    ("a GitHub token", r"\b(?:gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,})"),
    ("a GitLab token", r"\bglpat-[A-Za-z0-9_-]{16,}"),
    ("a secret API key (sk-)", r"\bsk-[A-Za-z0-9_-]{16,}"),
    ("a Stripe key", r"\b[rsp]k_(?:live|test)_[A-Za-z0-9]{10,}"),
    ("an AWS access key id", r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    ("a signing secret (whsec_)", r"\bwhsec_[A-Za-z0-9+/=]{8,}"),
    ("a JSON Web Token", r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"),
    ("a Google API key", r"\bAIza[0-9A-Za-z_-]{30,}"),
    ("a private key", r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    ("a reconciler API token", r"\brcn_[A-Za-z0-9_-]{20,}"),
    ("a SendGrid key", r"\bSG\.[A-Za-z0-9_-]{16,}\.[A-Za-z0-9_-]{16,}"),
    ("an npm token", r"\bnpm_[A-Za-z0-9]{30,}"),
    ("a Mailgun key", r"\bkey-[0-9a-z]{32}\b"),
)
# One pass finds them all; the group that matched says which. The hint, the shapes'
# prefixes alone, is some thirty times faster and rules out nearly every string.
_SHAPES = re.compile("|".join(f"(?P<s{i}>{p})" for i, (_w, p) in enumerate(_SHAPE_LIST)))
_SHAPE_HINT = re.compile(
    r"xox|xapp-|gh[pousr]_|github_pat_|glpat-|sk-|k_(?:live|test)_|AKIA|ASIA|whsec_|eyJ|AIza"
    r"|-----BEGIN|rcn_|SG\.|npm_|key-"
)
_RUN = re.compile(r"[A-Za-z0-9+=_-]{20,}")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_PIECE = re.compile(r"[A-Z]?[a-z]+|[A-Z]+|[0-9]+")
_HEX = re.compile(r"[0-9a-fA-F]+")


def shannon_entropy(text: str) -> float:
    """Bits per character of `text`, from its own character frequencies."""
    if not text:
        return 0.0
    n = len(text)
    return -sum(c / n * math.log2(c / n) for c in Counter(text).values())


def random_looking(run: str) -> bool:
    """A run of 20+ base64/hex characters that reads as random, not as words.

    Random tokens mix letters and digits in short pieces (`c2lnbmluZy1rZXkt`: c, 2,
    lnbmlu, Zy, 1, ...) and use many distinct characters; identifiers such as
    `us-east-1-production-cluster` are long words, and `XXXXXXXXXXXXXXXXXXXX` repeats.
    """
    if len(run) < 20 or _UUID.fullmatch(run):
        return False
    core = run.replace("-", "").replace("_", "")
    if not (any(c.isdigit() for c in core) and any(c.isalpha() for c in core)):
        return False
    entropy = shannon_entropy(core)
    if _HEX.fullmatch(core):
        return len(core) >= 32 and entropy >= 3.0
    pieces = _PIECE.findall(core)
    if not pieces or len(core) / len(pieces) >= 3.5:
        return False
    return entropy >= 0.8 * math.log2(len(core))


def _shape_spans(view: str, *, entropy: bool) -> Iterable[tuple[int, int, str]]:
    if len(view) < 12:  # shorter than any shape or random run
        return
    for match in _SHAPES.finditer(view) if _SHAPE_HINT.search(view) else ():
        what = _SHAPE_LIST[int(str(match.lastgroup)[1:])][0]
        yield match.start(), match.end(), f"looks like {what}"
    if entropy:
        for match in _RUN.finditer(view):
            if random_looking(match.group()):
                yield match.start(), match.end(), "a random-looking value"


# -- URLs --------------------------------------------------------------------------------

_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s\"'<>\\]+")
_SLACK = ("hooks.slack.com",)
_DISCORD = ("discord.com", "discordapp.com")
_DISCORD_PATH = re.compile(r"/api/(?:v[0-9]+/)?webhooks/", re.IGNORECASE)
_TEAMS_SUFFIX = (".webhook.office.com",)
_TEAMS = ("outlook.office.com", "outlook.office365.com")


def normalise_host(host: str) -> str:
    """Lower case, no trailing dot, IDNA (so `HOOKS.SLACK.COM.` is `hooks.slack.com`)."""
    host = host.strip().strip("[]").lower().rstrip(".")
    if host.isascii():
        return host
    try:
        return host.encode("idna").decode("ascii").lower().rstrip(".")
    except UnicodeError:
        return host


def _under(host: str, domains: Iterable[str]) -> bool:
    return any(host == d or host.endswith("." + d) for d in domains)


def secret_path_service(host: str, path: str) -> str | None:
    """The service whose webhook URLs hold their secret in the path, if this is one."""
    host = normalise_host(host)
    if path in ("", "/"):
        return None
    if _under(host, _SLACK):
        return "Slack"
    if _under(host, _DISCORD) and ("webhooks" in path.lower() or _DISCORD_PATH.search(path)):
        return "Discord"
    if host.endswith(_TEAMS_SUFFIX) or _under(host, _TEAMS):
        return "Microsoft Teams"
    return None


def _host_of(hostport: str) -> str:
    if hostport.startswith("["):
        return hostport[1 : hostport.find("]")] if "]" in hostport else hostport
    return hostport.rsplit(":", 1)[0] if hostport.count(":") == 1 else hostport


def _url_spans(text: str, view: str, start: int, end: int) -> list[tuple[int, int, str]]:
    """Literal credentials inside the URL at text[start:end], as spans of `text`."""
    spans: list[tuple[int, int, str]] = []
    scheme_end = view.index("://", start) + 3
    rest_end = end
    for stop in ("/", "?", "#"):
        at = view.find(stop, scheme_end, end)
        if at != -1:
            rest_end = min(rest_end, at)
    authority = view[scheme_end:rest_end]
    at_sign = authority.rfind("@")
    if at_sign != -1:
        userinfo = authority[:at_sign]
        if userinfo.replace(_HIDDEN, "").replace(":", ""):
            spans.append((scheme_end, scheme_end + at_sign, "user info in a URL"))
        hostport = authority[at_sign + 1 :]
    else:
        hostport = authority
    path_end = end
    for stop in ("?", "#"):
        at = view.find(stop, rest_end, end)
        if at != -1:
            path_end = min(path_end, at)
    path = view[rest_end:path_end]
    host = _host_of(hostport)
    service = secret_path_service(host, path) if _HIDDEN not in host else None
    if service and _HIDDEN not in path:
        spans.append(
            (rest_end + 1, path_end, f"a {service} webhook URL holds its secret in its path")
        )
    else:
        offset = rest_end
        for segment in path.split("/"):
            spans += [
                (offset + s, offset + e, why) for s, e, why in _shape_spans(segment, entropy=True)
            ]
            offset += len(segment) + 1
    if path_end < end:  # a query and/or a fragment: name=value pairs
        offset = path_end + 1
        for pair in re.split(r"[&#;]", view[path_end + 1 : end]):
            name, sep, value = pair.partition("=")
            value_at = offset + len(name) + len(sep)
            if sep and value and credential_name(name, "query"):
                if not _only_references(text[value_at : value_at + len(value)]):
                    spans.append((value_at, value_at + len(value), f"query parameter {name}"))
            else:
                base, part = (value_at, value) if sep else (offset, name)
                spans += [
                    (base + s, base + e, why) for s, e, why in _shape_spans(part, entropy=True)
                ]
            offset += len(pair) + 1
    return spans


# -- one string ---------------------------------------------------------------------------


def text_spans(text: str, *, entropy: bool = True) -> tuple[tuple[int, int, str], ...]:
    """Where `text` holds a literal credential: (start, end, why), by the rule above."""
    if len(text) < 12 and "://" not in text:  # shorter than any shape or random run
        return ()
    # Most text has no URL, no shape's prefix and no long run: three searches in C.
    if "://" not in text and not _SHAPE_HINT.search(text) and not _RUN.search(text):
        return ()
    return _text_spans(text, entropy)


@functools.lru_cache(maxsize=8192)  # definitions repeat their values (Content-Type, ...)
def _text_spans(text: str, entropy: bool) -> tuple[tuple[int, int, str], ...]:
    view = _literal_view(text)
    spans: list[tuple[int, int, str]] = []
    covered: list[tuple[int, int]] = []
    for match in _URL.finditer(view):
        spans += _url_spans(text, view, match.start(), match.end())
        covered.append(match.span())
    for start, end, why in _shape_spans(view, entropy=entropy):
        inside_url = any(s <= start and end <= e for s, e in covered)
        if not inside_url or not why.startswith("a random"):
            spans.append((start, end, why))
    return tuple(spans)


def _apply_mask(text: str, spans: Sequence[tuple[int, int, str]]) -> str:
    if not spans:
        return text
    out, last = [], 0
    for start, end, _why in sorted(spans):
        if start < last:  # overlaps a span already masked
            start = last
            if start >= end:
                continue
        out.append(text[last:start])
        out.append(MASK)
        last = end
    out.append(text[last:])
    return "".join(out)


def mask_text(text: str) -> str:
    """Free text (an attempt's error, a pause reason) with every literal credential in
    it masked: a URL's user info, secret query values and secret-bearing paths, known
    token shapes and random-looking runs."""
    return _apply_mask(text, text_spans(text))


@dataclass(frozen=True)
class Hit:
    """A literal credential: where it is in the definition, and why it is one."""

    loc: Loc
    why: str
    scheme: str = ""  # `Bearer ` when the value starts with an auth scheme: kept in the advice


def _named_value(value: str, name: str) -> tuple[str, str | None]:
    """A value under a credential name: masked whole, unless only references."""
    if not value or _only_references(value):
        spans = text_spans(value)
        return _apply_mask(value, spans), (spans[0][2] if spans else None)
    return MASK, f"the name {name} says it holds a credential"


def _value(value: str, name: str | None, context: Context) -> tuple[str, str | None]:
    if name is not None and credential_name(name, context):
        return _named_value(value, name)
    spans = text_spans(value)
    return _apply_mask(value, spans), (spans[0][2] if spans else None)


# Under a credential-named body key, values this short are ids (`"key": "OPS"`), not secrets.
_BODY_NAMED_MIN = 6


def _body(value: Any, loc: Loc, named: str | None, hits: list[Hit]) -> Any:
    if isinstance(value, str):
        if named is not None and len(value) >= _BODY_NAMED_MIN:
            shown, why = _named_value(value, named)
        else:
            shown, why = _value(value, None, "body")
        if why:
            hits.append(Hit(loc, why))
        return shown
    if isinstance(value, dict):
        return {
            key: _body(
                item,
                loc + (key,),
                key if credential_name(key, "body") else named,
                hits,
            )
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_body(item, loc + (i,), named, hits) for i, item in enumerate(value)]
    return value


_SCHEME = re.compile(r"(?:Bearer|Basic|Token|Bot|Digest) +(?=\S)", re.IGNORECASE)


def _pairs(field: str, pairs: Any, context: Context, hits: list[Hit]) -> Any:  # headers or query
    if not isinstance(pairs, dict):
        return pairs
    shown = {}
    for name, value in pairs.items():
        if isinstance(value, str):
            scheme = _SCHEME.match(value)
            value, why = _value(value, name, context)
            if why:
                hits.append(Hit((field, name), why, scheme.group() if scheme else ""))
        shown[name] = value
    return shown


_FIELDS: dict[str, Callable[[Any, list[Hit]], Any]] = {
    "url": lambda v, hits: _string(("url",), v, hits, entropy=True),
    "headers": lambda v, hits: _pairs("headers", v, "header", hits),
    "query": lambda v, hits: _pairs("query", v, "query", hits),
    "body": lambda v, hits: _body(v, ("body",), None, hits),
    # Free text: token shapes and URLs only; prose is not random enough to judge.
    "description": lambda v, hits: _string(("description",), v, hits, entropy=False),
}


def _string(loc: Loc, value: Any, hits: list[Hit], *, entropy: bool) -> Any:
    if not isinstance(value, str):
        return value
    spans = text_spans(value, entropy=entropy)
    if spans:
        hits.append(Hit(loc, spans[0][2]))
    return _apply_mask(value, spans)


def scan(spec: dict[str, Any]) -> tuple[dict[str, Any], list[Hit]]:
    """A canonical definition (or part of one) with every literal credential masked,
    and where each was found. `validate` refuses the hits; every output shows the mask."""
    hits: list[Hit] = []
    shown = dict(spec)
    for field, handle in _FIELDS.items():
        if field in shown:
            shown[field] = handle(shown[field], hits)
    if isinstance(shown.get("signing_secret"), str):  # always references when valid
        secret = shown["signing_secret"]
        if not all(_REFERENCE.fullmatch(part) for part in secret.split()):
            shown["signing_secret"] = MASK
    return shown, hits


def mask(spec: dict[str, Any]) -> dict[str, Any]:
    return scan(spec)[0]


def find(spec: dict[str, Any]) -> list[Hit]:
    return scan(spec)[1]


# -- what validate says -------------------------------------------------------------------


def dotted(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else ("." if out else "") + str(part)
    return out


def allow_key(path: str) -> str:
    """An allow_literal entry as compared: header names ignore case."""
    if path.lower().startswith("headers."):
        return "headers." + path[len("headers.") :].lower()
    return path


def variable_name(organization: str, *parts: str) -> str:
    """The ${env:NAME} a literal should become: ACME_X_AUTH for acme's X-Auth header."""
    words = "_".join(re.sub(r"[^A-Za-z0-9]+", "_", p).strip("_") for p in (organization, *parts))
    name = re.sub(r"_+", "_", words).upper().strip("_")
    return name if name[:1].isalpha() else "ENV_" + name


def message(hit: Hit, organization: str, webhook: str) -> str:
    """One line for validate; it names the field and the reference to write, never the value."""
    where = dotted(hit.loc)
    field = hit.loc[0]
    if field == "headers" or field == "query":
        variable = variable_name(organization, str(hit.loc[1]))
        advice = f"write {hit.scheme}${{env:{variable}}} and set the variable on the dispatcher"
    elif field == "url":
        variable = variable_name(organization, webhook, "url")
        advice = (
            f"write ${{env:{variable}}} (the whole URL, or the part that holds the secret) "
            "and set the variable on the dispatcher"
        )
    elif field == "body":
        variable = variable_name(organization, str(hit.loc[-1]))
        advice = (
            f"a body cannot read ${{env:}}: send it in a header or query value such as "
            f"${{env:{variable}}} and set the variable on the dispatcher"
        )
    else:
        advice = "remove it; free text is no place for a credential"
    exception = f"if it is not a secret, name {where} in allow_literal"
    return f"{where}: a literal credential; {advice} ({hit.why}; {exception})"
