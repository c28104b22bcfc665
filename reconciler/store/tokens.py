"""API tokens as the store keeps them: a hash of the secret, never the secret.

Times are seconds since the epoch (floats) from the caller's clock, so tests move
time instead of waiting for a token to expire.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol

# The columns of api_tokens, in the order token_from_row reads them (both backends).
TOKEN_COLUMNS = (
    "id, name, role, organizations, all_organizations, token_hash, created_at, expires_at, "
    "revoked_at"
)


@dataclass(frozen=True)
class TokenRecord:
    id: str  # public: what `tokens list` shows and `tokens revoke` takes
    name: str  # a note for humans: who or what holds it
    role: str  # admin | publisher | auditor | metrics
    organizations: tuple[str, ...]  # sorted; empty when all_organizations
    all_organizations: bool
    token_hash: str  # hex SHA-256 of the secret
    created_at: float
    expires_at: float | None = None
    revoked_at: float | None = None

    def usable(self, now: float) -> bool:
        """Neither revoked nor expired at `now`."""
        if self.revoked_at is not None:
            return False
        return self.expires_at is None or now < self.expires_at

    def as_json(self) -> dict[str, Any]:
        """What may be shown about a token: everything but its hash."""
        return {
            "id": self.id,
            "name": self.name,
            "role": self.role,
            "organizations": "*" if self.all_organizations else list(self.organizations),
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "revoked_at": self.revoked_at,
        }


class TokenStore(Protocol):
    """What the token commands and the HTTP API need of a store."""

    def add_token(self, token: TokenRecord) -> None:
        """Store a new token; its id and hash are new (the caller made them at random)."""
        ...

    def tokens(self) -> list[TokenRecord]:
        """Every token, revoked and expired ones too, oldest first."""
        ...

    def revoke_token(self, token_id: str, now: float) -> bool:
        """Revoke a token; False when there is no such token or it was revoked already."""
        ...

    def token_by_hash(self, token_hash: str) -> TokenRecord | None: ...

    def close(self) -> None: ...


def token_from_row(row: Any) -> TokenRecord:
    """A row of TOKEN_COLUMNS, from SQLite or PostgreSQL."""
    id_, name, role, organizations, all_organizations, token_hash, created, expires, revoked = row
    return TokenRecord(
        id=id_,
        name=name,
        role=role,
        organizations=tuple(json.loads(organizations)),
        all_organizations=bool(all_organizations),
        token_hash=token_hash,
        created_at=float(created),
        expires_at=None if expires is None else float(expires),
        revoked_at=None if revoked is None else float(revoked),
    )
