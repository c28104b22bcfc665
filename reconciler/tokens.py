"""API tokens: who may call the dispatcher's HTTP API, in which role, for whom.

A token is `rcn_` and 43 random URL-safe characters (256 bits from `secrets`).
It is shown once, when it is made; the store keeps its SHA-256 only. A slow,
salted password hash (bcrypt, scrypt) protects *guessable* secrets from a
stolen database; a 256-bit random token cannot be guessed, so a plain SHA-256 is
as safe and costs nothing on every request.

Roles, each within the token's organizations:

    admin      send events, read deliveries and endpoint health, replay them, resume
               paused webhooks
    publisher  send events
    auditor    read deliveries and endpoint health
    metrics    nothing more than every role may: Prometheus' credential

Every valid token may read /openapi.json, and /metrics for its organizations: the
series labelled with one of them; a token with every organization (--all-orgs)
also reads the installation's series (the queue, attempt durations).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from reconciler.durations import parse_duration
from reconciler.errors import TokenError
from reconciler.model import NAME_PATTERN, NAME_RULE
from reconciler.store.tokens import TokenRecord, TokenStore

ROLES = ("admin", "publisher", "auditor", "metrics")
PREFIX = "rcn_"

Permission = Literal["send", "read", "replay", "resume"]
PERMISSIONS: dict[str, frozenset[Permission]] = {
    "admin": frozenset({"send", "read", "replay", "resume"}),
    "publisher": frozenset({"send"}),
    "auditor": frozenset({"read"}),
    "metrics": frozenset(),
}
# What a refusal says a role may not do.
ACTIONS: dict[Permission, str] = {
    "send": "send events",
    "read": "read deliveries",
    "replay": "replay deliveries",
    "resume": "resume webhooks",
}

_NAME = re.compile(NAME_PATTERN)
_EXPIRY = re.compile(r"^([0-9]+)(m|h|d|w)$")
_EXPIRY_UNITS = {"m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}


def token_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def new_secret() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def new_token_id() -> str:
    return "tok_" + secrets.token_hex(6)


def parse_expiry(text: str) -> float:
    """Seconds in a token's lifetime: `30d`, `12h`, `2w`, `90m` (or 15s-style durations).
    Raises ValueError."""
    match = _EXPIRY.match(text)
    if match:
        return int(match.group(1)) * _EXPIRY_UNITS[match.group(2)]
    try:
        return parse_duration(text)
    except ValueError:
        raise ValueError(f"not a lifetime: {text!r} (use e.g. 90m, 12h, 30d, 2w)") from None


def create_token(
    store: TokenStore,
    *,
    role: str,
    organizations: Iterable[str],
    all_organizations: bool,
    name: str,
    expires_in: float | None,
    now: float,
) -> tuple[TokenRecord, str]:
    """Make a token, store its hash, and return it with its secret (shown once)."""
    orgs = check_request(role, organizations, all_organizations, expires_in)
    secret = new_secret()
    record = TokenRecord(
        id=new_token_id(),
        name=name,
        role=role,
        organizations=orgs,
        all_organizations=all_organizations,
        token_hash=token_hash(secret),
        created_at=now,
        expires_at=None if expires_in is None else now + expires_in,
    )
    store.add_token(record)
    return record, secret


def check_request(
    role: str, organizations: Iterable[str], all_organizations: bool, expires_in: float | None
) -> tuple[str, ...]:
    """Refuse a token asked for wrongly (TokenError); return its organizations, sorted."""
    if role not in ROLES:
        raise TokenError(f"unknown role {role!r}: use one of {', '.join(ROLES)}")
    orgs = tuple(sorted(set(organizations)))
    if all_organizations and orgs:
        raise TokenError("give --org or --all-orgs, not both")
    if not all_organizations and not orgs:
        raise TokenError(
            "a token is scoped to organizations: give --org ORG (repeatable), "
            "or --all-orgs for every organization"
        )
    for org in orgs:
        if not _NAME.match(org):
            raise TokenError(f"--org {org!r} is not a valid organization name ({NAME_RULE})")
    if expires_in is not None and expires_in <= 0:
        raise TokenError("--expires must be in the future")
    return orgs


def revoke_token(store: TokenStore, token_id: str, now: float) -> TokenRecord:
    """Revoke a token by id; revoking a revoked token again changes nothing."""
    found = next((t for t in store.tokens() if t.id == token_id), None)
    if found is None:
        raise TokenError(f"no token {token_id} (see `reconciler tokens list`)")
    store.revoke_token(token_id, now)
    return found


def find_by_hash(store: TokenStore, digest: str) -> TokenRecord | None:
    """The token whose secret hashes to `digest`, usable or not.

    The lookup is by hash: a caller controls the secret, not its hash, so the
    index walk tells them nothing. The final comparison is constant-time all the same.
    """
    found = store.token_by_hash(digest)
    if found is None or not hmac.compare_digest(found.token_hash, digest):
        return None
    return found


def verify(store: TokenStore, presented: str, now: float) -> TokenRecord | None:
    """The usable (neither revoked nor expired) token whose secret was presented."""
    found = find_by_hash(store, token_hash(presented))
    return found if found is not None and found.usable(now) else None


@dataclass(frozen=True)
class Access:
    """What one verified token may do: its role's permissions within its organizations."""

    token_id: str
    role: str
    organizations: frozenset[str]
    all_organizations: bool = False

    @classmethod
    def of(cls, token: TokenRecord) -> Access:
        return cls(token.id, token.role, frozenset(token.organizations), token.all_organizations)

    def may(self, permission: Permission) -> bool:
        return permission in PERMISSIONS.get(self.role, frozenset())

    def sees(self, organization: str) -> bool:
        return self.all_organizations or organization in self.organizations

    def visible(self, organization: str | None) -> list[str] | None:
        """The organizations a listing may show: None for all of them."""
        if organization is not None:
            return [organization]
        return None if self.all_organizations else sorted(self.organizations)

    def refusal(self, permission: Permission) -> str:
        return f"the role {self.role} may not {ACTIONS[permission]}"

    def out_of_scope(self, organization: str) -> str:
        return f"organization {organization} is out of this token's scope"


def when(moment: float | None) -> str:
    """A token's time as shown by `tokens list`: ISO 8601 UTC to the second, or '-'."""
    if moment is None:
        return "-"
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
