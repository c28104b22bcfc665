"""The API tokens' contract: add, list, look up by hash, revoke.

`TokenContract` uses only the TokenStore methods (and the library functions made
of them), so every backend runs these very tests: SQLite on a file, PostgreSQL on
the real server (marker `postgres`). Times are given, never read from a clock.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler import tokens
from reconciler.errors import TokenError
from reconciler.store.sqlite import SqliteStore
from reconciler.store.tokens import TokenRecord

NOW = 1_800_000_000.0
DAY = 86_400.0


def record(token_id: str = "tok_1", **fields: Any) -> TokenRecord:
    values: dict[str, Any] = {
        "name": "rules-engine",
        "role": "publisher",
        "organizations": ("acme",),
        "all_organizations": False,
        "token_hash": tokens.token_hash(f"rcn_secret-of-{token_id}"),
        "created_at": NOW,
        "expires_at": None,
        "revoked_at": None,
    }
    values.update(fields)
    return TokenRecord(id=token_id, **values)


class TokenContract:
    """Subclass as `Test<Backend>TokenContract` and override `store_factory`."""

    @pytest.fixture
    def store_factory(self) -> Any:
        pytest.fail("a backend's test module provides store_factory", pytrace=False)

    @pytest.fixture
    def store(self, store_factory: Any) -> Any:
        return store_factory()

    def test_a_token_reads_back_as_it_was_stored(self, store: Any) -> None:
        partner = record(
            "tok_partner",
            role="admin",
            organizations=("acme", "globex", "initech"),
            expires_at=NOW + 30 * DAY,
        )
        everyone = record("tok_all", role="auditor", organizations=(), all_organizations=True)
        store.add_token(partner)
        store.add_token(everyone)

        assert store.token_by_hash(partner.token_hash) == partner
        assert store.token_by_hash(everyone.token_hash) == everyone
        assert store.token_by_hash(tokens.token_hash("rcn_never-made")) is None

    def test_tokens_are_listed_oldest_first_revoked_ones_too(self, store: Any) -> None:
        store.add_token(record("tok_b", created_at=NOW + 1))
        store.add_token(record("tok_a", created_at=NOW + 2))
        store.add_token(record("tok_c", created_at=NOW))
        store.revoke_token("tok_a", NOW + 3)

        listed = store.tokens()
        assert [t.id for t in listed] == ["tok_c", "tok_b", "tok_a"]
        assert [t.revoked_at for t in listed] == [None, None, NOW + 3]

    def test_an_empty_state_has_no_tokens(self, store: Any) -> None:
        assert store.tokens() == []

    def test_revoking_marks_the_token_once(self, store: Any) -> None:
        made = record()
        store.add_token(made)

        assert store.revoke_token("tok_1", NOW + 10) is True
        assert store.revoke_token("tok_1", NOW + 20) is False  # the first time stands
        assert store.revoke_token("tok_unknown", NOW) is False
        found = store.token_by_hash(made.token_hash)
        assert found.revoked_at == NOW + 10
        assert not found.usable(NOW + 11)

    def test_another_connection_sees_tokens_and_revocations_at_once(
        self, store: Any, store_factory: Any
    ) -> None:
        # A dispatcher holds its own connection while `tokens create/revoke` run.
        dispatcher = store_factory()
        made = record()
        store.add_token(made)
        assert dispatcher.token_by_hash(made.token_hash) == made
        store.revoke_token("tok_1", NOW + 1)
        assert dispatcher.token_by_hash(made.token_hash).revoked_at == NOW + 1

    def test_the_migration_is_recorded_by_name(self, store: Any) -> None:
        assert "0004_api_tokens" in store.migrations()

    # -- the library over the store ------------------------------------------------

    def test_create_token_stores_only_a_hash_of_the_secret(self, store: Any) -> None:
        made, secret = tokens.create_token(
            store,
            role="admin",
            organizations=["globex", "acme", "acme"],
            all_organizations=False,
            name="partner-x",
            expires_in=30 * DAY,
            now=NOW,
        )

        assert secret.startswith("rcn_") and len(secret) == len("rcn_") + 43
        assert made.id.startswith("tok_")
        assert (made.role, made.organizations, made.name) == (
            "admin",
            ("acme", "globex"),
            "partner-x",
        )
        assert made.expires_at == NOW + 30 * DAY
        (stored,) = store.tokens()
        assert stored == made
        assert secret not in repr(stored)
        assert stored.token_hash == tokens.token_hash(secret)
        assert secret not in str(stored.as_json()) and "token_hash" not in stored.as_json()

    def test_verify_accepts_the_secret_until_it_expires_or_is_revoked(self, store: Any) -> None:
        made, secret = tokens.create_token(
            store,
            role="auditor",
            organizations=["acme"],
            all_organizations=False,
            name="",
            expires_in=DAY,
            now=NOW,
        )
        other, other_secret = tokens.create_token(
            store,
            role="publisher",
            organizations=[],
            all_organizations=True,
            name="",
            expires_in=None,
            now=NOW,
        )

        assert tokens.verify(store, secret, NOW) == made
        assert tokens.verify(store, secret, NOW + DAY - 0.001) == made
        assert tokens.verify(store, secret, NOW + DAY) is None  # expired at the instant
        assert tokens.verify(store, secret + "x", NOW) is None
        assert tokens.verify(store, "rcn_" + "A" * 43, NOW) is None
        assert tokens.verify(store, other_secret, NOW + 3650 * DAY) == other  # no expiry

        tokens.revoke_token(store, other.id, NOW + 5)
        assert tokens.verify(store, other_secret, NOW + 6) is None

    def test_revoking_an_unknown_token_is_an_error(self, store: Any) -> None:
        with pytest.raises(TokenError, match="no token tok_nope"):
            tokens.revoke_token(store, "tok_nope", NOW)

    @pytest.mark.parametrize(
        ("role", "organizations", "all_organizations", "expires_in", "words"),
        [
            ("admin", [], False, None, "give --org ORG"),
            ("admin", ["acme"], True, None, "not both"),
            ("root", ["acme"], False, None, "unknown role 'root'"),
            ("admin", ["Acme Corp"], False, None, "not a valid organization name"),
            ("admin", ["acme"], False, 0.0, "in the future"),
        ],
    )
    def test_a_token_asked_for_wrongly_is_refused_and_nothing_is_stored(
        self,
        store: Any,
        role: str,
        organizations: list[str],
        all_organizations: bool,
        expires_in: float | None,
        words: str,
    ) -> None:
        with pytest.raises(TokenError, match=words):
            tokens.create_token(
                store,
                role=role,
                organizations=organizations,
                all_organizations=all_organizations,
                name="",
                expires_in=expires_in,
                now=NOW,
            )
        assert store.tokens() == []


class _Factory:
    """Opens connections to one state; closes them all at teardown."""

    def __init__(self, opener: Any) -> None:
        self.opener = opener
        self.opened: list[Any] = []

    def __call__(self) -> Any:
        store = self.opener()
        self.opened.append(store)
        return store

    def close(self) -> None:
        for store in self.opened:
            store.close()


class TestSqliteTokenContract(TokenContract):
    @pytest.fixture
    def store_factory(self, tmp_path: Path) -> Iterator[_Factory]:
        made = _Factory(lambda: SqliteStore(tmp_path / "state.db"))
        yield made
        made.close()


@pytest.mark.postgres
class TestPostgresTokenContract(TokenContract):
    @pytest.fixture
    def store_factory(self, postgres_url: str) -> Iterator[_Factory]:
        from reconciler.store.postgres import PostgresStore

        made = _Factory(lambda: PostgresStore(postgres_url))
        yield made
        made.close()


def test_parse_expiry() -> None:
    assert tokens.parse_expiry("30d") == 30 * DAY
    assert tokens.parse_expiry("2w") == 14 * DAY
    assert tokens.parse_expiry("12h") == 12 * 3600
    assert tokens.parse_expiry("90m") == 90 * 60
    assert tokens.parse_expiry("45s") == 45
    with pytest.raises(ValueError, match="not a lifetime: '3x'"):
        tokens.parse_expiry("3x")
