"""The console's part of the store (store/console.py): sessions and the pages'
keyset-paged queries, the same tests on SQLite and PostgreSQL (`each_store`)."""

from __future__ import annotations

from typing import Any

from reconciler.store.base import AuditRecord, Write
from reconciler.store.breakers import THRESHOLD
from reconciler.store.console import (
    BUCKET_SQL,
    DeliveryFilter,
    HistoryFilter,
    SessionRecord,
    WebhookFilter,
)
from reconciler.store.queue import AttemptResult, EventRecord
from reconciler.store.retention import bucket_of
from tests.contract.test_breaker_contract import down, report
from tests.support.helpers_state import put_specs, spec

NOW = 1_800_000_000.0


def _session(id_hash: str, idle: float, absolute: float) -> SessionRecord:
    return SessionRecord(id_hash, "tok_1", "csrf-" + id_hash, NOW, NOW + idle, NOW + absolute)


def test_sessions_are_stored_touched_deleted_and_swept(each_store: Any) -> None:
    store = each_store
    store.add_session(_session("a" * 64, 60, 600))
    store.add_session(_session("b" * 64, 10, 600))
    assert store.session("a" * 64) == _session("a" * 64, 60, 600)
    assert store.session("c" * 64) is None
    store.touch_session("a" * 64, NOW + 1000)  # never past the absolute limit
    assert store.session("a" * 64).idle_expires_at == NOW + 600
    assert store.delete_expired_sessions(NOW + 30) == 1
    assert store.session("b" * 64) is None
    store.delete_session("a" * 64)
    assert store.session("a" * 64) is None


def _events(store: Any, organization: str, count: int, start: float = NOW) -> None:
    for n in range(count):
        store.add_events(
            [
                EventRecord(
                    f"e{n:04}", "new_rule_violation", organization, "r", "d",
                    "2027-01-15T08:00:00Z",
                )
            ],
            start + n // 2,  # two deliveries share each created_at: the id breaks ties
        )  # fmt: skip


def _page(store: Any, **filters: Any) -> list[Any]:
    found = store.delivery_page(DeliveryFilter(**{"organizations": None, **filters}))
    assert found.searched_to is None
    return list(found.records)


def test_deliveries_page_by_keyset_newest_first_within_organizations(each_store: Any) -> None:
    store = each_store
    put_specs(store, [spec("slack"), spec("ops", "globex")])
    _events(store, "acme", 25)
    _events(store, "globex", 5)
    seen: list[Any] = []
    before = None
    while True:
        page = _page(store, organizations=["acme"], limit=10, before=before)
        seen += page
        if len(page) < 10:
            break
        before = (page[-1].created_at, page[-1].id)
    assert len(seen) == len({d.id for d in seen}) == 25
    assert all(d.organization == "acme" for d in seen)
    keys = [(d.created_at, d.id) for d in seen]
    assert keys == sorted(keys, reverse=True)
    both = _page(store, organizations=["acme", "globex"], limit=100)
    assert len(both) == 30
    assert _page(store, limit=100) == both
    many = ["acme", "globex", *(f"org-{n}" for n in range(20))]  # past UNION_LIMIT
    assert _page(store, organizations=many, limit=100) == both
    merged = _page(store, organizations=["acme", "globex"], limit=7)
    assert merged == both[:7]
    last = merged[-1]
    after = _page(store, organizations=["acme", "globex"], before=(last.created_at, last.id))
    assert after == both[7:]
    window = _page(store, since=NOW + 2, until=NOW + 4, limit=100)
    assert {d.created_at for d in window} == {NOW + 2, NOW + 3}
    assert _page(store, event_type="reserved_instance_surplus") == []
    assert len(_page(store, webhook="ops")) == 5
    assert len(_page(store, organizations=["globex"], webhook="ops")) == 5
    assert _page(store, organizations=["acme"], webhook="ops") == []
    assert [d.id for d in _page(store, status="pending", limit=100)] == [d.id for d in both]


def test_a_rare_filter_searches_a_bounded_window_and_says_where_it_stopped(
    each_store: Any, monkeypatch: Any
) -> None:
    from reconciler.store import console

    monkeypatch.setattr(console, "SEARCH_ROWS", 6)
    store = each_store
    put_specs(store, [spec("slack"), spec("ops", "globex")])
    _events(store, "acme", 10)
    _events(store, "globex", 3, start=NOW - 100)  # older than every acme delivery
    pages = []
    before = None
    while True:
        found = store.delivery_page(
            DeliveryFilter(organizations=None, webhook="ops", limit=5, before=before)
        )
        pages.append(([d.webhook for d in found.records], found.searched_to is not None))
        if found.searched_to is None and len(found.records) < 5:
            break
        last = found.records[-1] if len(found.records) == 5 else None
        before = (last.created_at, last.id) if last else found.searched_to
    # 6 rows a search: acme's newest 6, acme's other 4 and globex's first 2, globex's last
    assert pages == [([], True), (["ops", "ops"], True), (["ops"], False)]


def test_webhooks_page_by_keyset_with_event_and_state(each_store: Any) -> None:
    store = each_store
    put_specs(
        store,
        [
            spec("a"),
            spec("b", event="reserved_instance_deficit"),
            spec("c", enabled=False),
            spec("d", "globex"),
        ],
    )
    store.pause("acme", "a", "HTTP 410", "dispatcher")
    names = lambda q: [w.name for w in store.webhook_page(q)]  # noqa: E731
    assert names(WebhookFilter(organizations=None)) == ["a", "b", "c", "d"]
    assert names(WebhookFilter(organizations=["acme"], limit=2)) == ["a", "b"]
    assert names(WebhookFilter(organizations=["acme"], after=("acme", "b"))) == ["c"]
    assert names(WebhookFilter(organizations=None, event="reserved_instance_deficit")) == ["b"]
    assert names(WebhookFilter(organizations=None, state="paused")) == ["a"]
    assert names(WebhookFilter(organizations=None, state="disabled")) == ["c"]
    assert names(WebhookFilter(organizations=None, state="enabled")) == ["b", "d"]
    assert names(WebhookFilter(organizations=None, state="breaker-open")) == []
    for _ in range(THRESHOLD):
        report(store, down("b"), NOW)
    assert names(WebhookFilter(organizations=None, state="breaker-open")) == ["b"]


def _finish(store: Any, outcomes: list[str], at: float) -> list[str]:
    """Claim every due delivery and finish them with `outcomes`, in order, at `at`."""
    claims = store.claim("w", 100, at, 60.0)
    claims.sort(key=lambda c: c.delivery_id)
    store.finish(
        [
            AttemptResult(
                c.delivery_id, c.attempt, at, 100.0 * (n + 1), outcome,
                200 if outcome == "delivered" else 400,
            )
            for n, (c, outcome) in enumerate(zip(claims, outcomes, strict=False))
        ],
        "w",
        at,
    )  # fmt: skip
    return [c.delivery_id for c in claims]


def test_webhook_outcomes_count_the_window_and_find_the_latest(each_store: Any) -> None:
    store = each_store
    put_specs(store, [spec("slack"), spec("quiet")])
    _events(store, "acme", 3)
    outcomes = ["delivered", "delivered", "failed", "failed", "delivered", "delivered"]
    _finish(store, outcomes, NOW + 10)
    found = store.webhook_outcomes([("acme", "slack"), ("acme", "quiet")], NOW)
    total = found[("acme", "slack")].delivered + found[("acme", "quiet")].delivered
    assert total == 4
    failed = found[("acme", "slack")].failed + found[("acme", "quiet")].failed
    assert failed == 2
    assert found[("acme", "slack")].last_at == NOW + 10
    assert store.webhook_outcomes([("acme", "slack")], NOW + 11)[("acme", "slack")].delivered == 0
    assert store.webhook_outcomes([("acme", "slack")], NOW + 11)[("acme", "slack")].last_at == (
        NOW + 10
    )


def test_webhook_outcomes_count_what_a_pause_holds_per_webhook(each_store: Any) -> None:
    store = each_store
    put_specs(store, [spec("slack"), spec("quiet"), spec("slack", "globex")])
    _events(store, "acme", 2)
    _events(store, "globex", 3)
    store.pause("acme", "slack", "HTTP 410 from the receiver", "dispatcher")
    store.pause("globex", "slack", "HTTP 410 from the receiver", "dispatcher")
    keys = [("acme", "slack"), ("acme", "quiet"), ("globex", "slack")]
    found = store.webhook_outcomes(keys, NOW)
    assert [found[k].held for k in keys] == [2, 0, 3]  # each its own, never another org's
    store.resume("acme", "slack", "tester")
    assert store.webhook_outcomes(keys, NOW)[("acme", "slack")].held == 0


def test_attempt_minutes_count_the_organizations_asked(each_store: Any) -> None:
    store = each_store
    put_specs(store, [spec("slack"), spec("ops", "globex")])
    _events(store, "acme", 2)
    _events(store, "globex", 1)
    _finish(store, ["delivered", "failed", "delivered"], NOW + 125)
    acme = store.attempt_minutes(["acme"], NOW, NOW + 126)
    assert sum(r.count for r in acme) == 2
    assert {r.minute for r in acme} == {int((NOW + 125) // 60)}
    everyone = store.attempt_minutes(None, NOW, NOW + 126)
    assert sum(r.count for r in everyone) == 3
    # durations 100, 200, 300 ms (in claim order): retention's buckets, counted in SQL
    assert sorted(r.bucket for r in everyone) == [
        bucket_of(100.0),
        bucket_of(200.0),
        bucket_of(300.0),
    ]
    assert store.attempt_minutes(None, NOW + 126, NOW + 600) == []  # [start, end)


def test_the_bucket_sql_is_retentions_bucket_of() -> None:
    import sqlite3

    with sqlite3.connect(":memory:") as db:
        for duration in (0.2, 1.0, 1.01, 19.0, 120.0, 999.9, 60_000.0, 10.0**9):
            (bucket,) = db.execute(
                f"SELECT {BUCKET_SQL} FROM (SELECT ? AS duration_ms) a", (duration,)
            ).fetchone()
            assert bucket == bucket_of(duration), duration


def test_history_page_filters_and_pages_by_id(each_store: Any) -> None:
    store = each_store
    records = [
        AuditRecord("create", "acme", "a", None, {"name": "a"}, "alice"),
        AuditRecord("create", "globex", "b", None, {"name": "b"}, "bob"),
        AuditRecord("update", "acme", "a", {"name": "a"}, {"name": "a", "x": 1}, "alice"),
    ]
    store.commit([Write("put", "acme", "a", spec("a").canonical_json())], records, 0)
    everything = store.history_page(HistoryFilter(organizations=None))
    assert [e.record.actor for e in everything] == ["alice", "bob", "alice"]
    acme = store.history_page(HistoryFilter(organizations=["acme"], limit=1))
    assert [e.record.action for e in acme] == ["update"]
    older = store.history_page(HistoryFilter(organizations=["acme"], before=acme[0].id))
    assert [e.record.action for e in older] == ["create"]
    assert store.history_page(HistoryFilter(organizations=None, actor="bob"))[0].record.name == "b"
    assert len(store.history_page(HistoryFilter(organizations=None, action="update"))) == 1


def test_paging_through_bounded_searches_finds_every_match_once(
    each_store: Any, monkeypatch: Any
) -> None:
    from reconciler.store import console

    store = each_store
    put_specs(store, [spec("slack"), spec("pager"), spec("ops", "globex")])
    _events(store, "acme", 9)
    _events(store, "globex", 7, start=NOW + 1)
    claims = sorted(store.claim("w", 100, NOW + 10, 60.0), key=lambda c: c.delivery_id)
    done = [
        AttemptResult(c.delivery_id, c.attempt, NOW + 10, 5.0, "delivered", 200)
        for c in claims[::3]
    ]
    store.finish(done, "w", NOW + 10)  # a third delivered, the rest in flight
    everything = _page(store, limit=1000)
    assert {d.status for d in everything} == {"delivered", "in_flight"}
    monkeypatch.setattr(console, "SEARCH_ROWS", 4)
    for filters in (
        {"organizations": ["acme", "globex"], "webhook": "ops"},
        {"organizations": ["acme", "globex"], "status": "in_flight"},
        {"organizations": None, "webhook": "pager"},
        {"organizations": ["acme"], "status": "in_flight"},
        {"organizations": None, "status": "delivered"},
    ):
        wanted = [
            d.id
            for d in everything
            if (filters.get("webhook") in (None, d.webhook))
            and (filters.get("status") in (None, d.status))
            and (filters["organizations"] is None or d.organization in filters["organizations"])
        ]
        seen: list[str] = []
        before = None
        for _turn in range(100):
            found = store.delivery_page(DeliveryFilter(limit=3, before=before, **filters))
            seen += [d.id for d in found.records]
            if len(found.records) == 3:
                before = (found.records[-1].created_at, found.records[-1].id)
            elif found.searched_to is not None:
                before = found.searched_to
            else:
                break
        assert seen == wanted, filters
