"""The annotation API, in process, on a real SQLite file and (when RLHFKIT_TEST_POSTGRES_URL is
set, as .ci/services.sh does) the same suite on PostgreSQL."""

from __future__ import annotations

import json
import os
import threading

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from rlhfkit.errors import RlhfkitError
from rlhfkit.feedback.annotation.app import create_app
from rlhfkit.feedback.annotation.db import (
    MAX_ID,
    SCHEMA_VERSION,
    SchemaVersion,
    add_user,
    load_items,
    make_engine,
    migrate,
    open_database,
    schema_version,
)

CRITERIA = {"helpfulness": "A", "accuracy": "tie", "safety": "both_bad"}


def _reset_postgres(url: str) -> str:
    """A fresh, empty schema for this test process (pytest-xdist workers run side by side)."""
    schema = "test_" + os.environ.get("PYTEST_XDIST_WORKER", "main")
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    engine.dispose()
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}options=-csearch_path%3D{schema}"


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'labels.db'}"
    url = os.environ.get("RLHFKIT_TEST_POSTGRES_URL")
    if not url:
        if os.environ.get("CI") == "true":
            raise AssertionError("RLHFKIT_TEST_POSTGRES_URL is unset; .ci/services.sh sets it")
        pytest.skip("RLHFKIT_TEST_POSTGRES_URL is not set (.ci/services.sh sets it in CI)")
    return _reset_postgres(url)


class Clock:
    """A clock the test moves; it also ticks a millisecond per reading, like real time."""

    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        self.now += 0.001
        return self.now


class Campaign:
    """Items + users + the app + a client, all on one database."""

    def __init__(self, db_url, records, users, **app_kwargs):
        engine, session_factory = open_database(db_url)
        load_items(session_factory, records)
        self.tokens = {name: add_user(session_factory, name, role) for name, role in users}
        engine.dispose()
        app_kwargs.setdefault("rate_limit", 0)
        self.clock = app_kwargs.setdefault("clock", Clock())
        self.app = create_app(db_url, seed=0, **app_kwargs)
        self.client = TestClient(self.app)
        self.client.__enter__()  # one event loop for all requests, not one per request
        self.records = records
        self._keys = 0

    def headers(self, name: str) -> dict:
        return {"Authorization": f"Bearer {self.tokens[name]}"}

    def get(self, name, path, **kw):
        return self.client.get(path, headers=self.headers(name), **kw)

    def post(self, name, path, body=None, **kw):
        return self.client.post(path, json=body, headers=self.headers(name), **kw)

    def next(self, name):
        return self.get(name, "/api/next")

    def body(self, item, choice="A", strength=3, criteria=None, key=None, **extra):
        self._keys += 1
        body = {
            "item_id": item["item_id"],
            "idempotency_key": key or f"key-{self._keys}",
            "overall": {"choice": choice, "strength": strength}
            if choice in ("A", "B")
            else {"choice": choice},
            "criteria": dict(criteria or CRITERIA),
        }
        body.update(extra)
        return body

    def label(self, name, item, **kw):
        return self.post(name, "/api/labels", self.body(item, **kw))

    def sql(self, query: str, **params):
        with self.app.state.engine.connect() as conn:
            return conn.execute(sa.text(query), params).all()

    def close(self):
        self.client.__exit__(None, None, None)
        self.app.state.engine.dispose()


def pairs(n: int, k: int = 2) -> list[dict]:
    return [
        {"prompt": f"prompt {i}", "responses": [f"response {i}.{j}" for j in range(k)]}
        for i in range(n)
    ]


def slot_of(item: dict, text: str) -> str:
    """The slot in which this annotator sees the response ``text``."""
    return next(r["slot"] for r in item["responses"] if r["text"] == text)


@pytest.fixture
def campaign(db_url):
    made = []

    def make(records=None, users=None, **kw):
        c = Campaign(
            db_url,
            records if records is not None else pairs(3),
            users or [("alice", "annotator"), ("bob", "annotator"), ("root", "admin")],
            **kw,
        )
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


# ----------------------------------------------------------------------------- basics


def test_label_round_trip_records_sides(campaign):
    c = campaign()
    r = c.next("alice")
    assert r.status_code == 200
    item = r.json()
    assert set(item) >= {"item_id", "prompt", "responses", "criteria", "k", "progress"}
    assert [x["slot"] for x in item["responses"]] == ["A", "B"]
    assert [x["name"] for x in item["criteria"]] == ["helpfulness", "accuracy", "safety"]
    assert c.next("alice").json() == item  # the same lease, the same sides
    r = c.label("alice", item, choice="B", strength=4)
    assert r.status_code == 201, r.text
    label = r.json()
    assert label["overall"] == {"choice": "B", "strength": 4}
    shown = [x["text"] for x in item["responses"]]
    original = c.records[item["item_id"] - 1]["responses"]
    assert [original[i] for i in label["display_order"]] == shown
    rows = c.sql("SELECT display_order, overall_choice, strength FROM labels")
    assert len(rows) == 1 and rows[0][1] == "B" and rows[0][2] == 4
    mine = c.get("alice", "/api/labels").json()["labels"]
    assert [m["label_id"] for m in mine] == [label["label_id"]]


def test_sides_are_randomised_per_annotator(campaign):
    c = campaign(records=pairs(16), overlap=2)
    orders = {"alice": [], "bob": []}
    for name in orders:
        while (r := c.next(name)).status_code == 200:
            item = r.json()
            orders[name].append(slot_of(item, c.records[item["item_id"] - 1]["responses"][0]))
            assert c.label(name, item).status_code == 201
    for seen in orders.values():
        assert len(seen) == 16
        assert 2 <= seen.count("A") <= 14  # shuffled, not always the same side
    assert orders["alice"] != orders["bob"]


def test_idempotent_retry_stores_one_row(campaign):
    c = campaign()
    item = c.next("alice").json()
    body = c.body(item, key="retry-me")
    first = c.post("alice", "/api/labels", body)
    again = c.post("alice", "/api/labels", body)
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json() == again.json()
    assert c.sql("SELECT COUNT(*) FROM labels")[0][0] == 1
    changed = dict(body, rationale="something else")
    conflict = c.post("alice", "/api/labels", changed)
    assert conflict.status_code == 409 and "idempotency_key" in conflict.json()["detail"]
    # A second label for the same item with a new key is refused too.
    other = c.post("alice", "/api/labels", dict(body, idempotency_key="new"))
    assert other.status_code == 409 and "already labelled" in other.json()["detail"]
    # Keys are per annotator: bob may use the same string.
    item_b = c.next("bob").json()
    assert c.post("bob", "/api/labels", c.body(item_b, key="retry-me")).status_code == 201


def test_concurrent_duplicates_and_concurrent_annotators(campaign):
    users = [(f"u{i}", "annotator") for i in range(5)] + [("root", "admin")]
    c = campaign(records=pairs(6), users=users, overlap=3)
    item = c.next("u0").json()
    body = c.body(item, key="same")
    statuses: list[int] = []
    barrier = threading.Barrier(8)

    def send():
        barrier.wait()
        statuses.append(c.post("u0", "/api/labels", body).status_code)

    threads = [threading.Thread(target=send) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses) == [200] * 7 + [201]
    assert c.sql("SELECT COUNT(*) FROM labels")[0][0] == 1

    acknowledged: list[int] = []
    errors: list[str] = []

    def annotate(name):
        while (r := c.next(name)).status_code == 200:
            posted = c.label(name, r.json())
            if posted.status_code != 201:
                errors.append(posted.text)
                return
            acknowledged.append(posted.json()["label_id"])

    threads = [threading.Thread(target=annotate, args=(f"u{i}",)) for i in range(1, 5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(acknowledged) == 6 * 3 - 1  # every place but u0's label
    assert c.sql("SELECT COUNT(*) FROM labels")[0][0] == 6 * 3
    per_item = c.sql("SELECT item_id, COUNT(*), COUNT(DISTINCT user_id) FROM labels GROUP BY 1")
    assert all(n == 3 and distinct == 3 for _item, n, distinct in per_item)


# ----------------------------------------------------------------------------- assignment


def test_overlap_distinct_annotators_nobody_twice(campaign):
    users = [("a1", "annotator"), ("a2", "annotator"), ("a3", "annotator"), ("root", "admin")]
    c = campaign(records=pairs(4), users=users, overlap=2)
    done = {name: [] for name, _ in users[:3]}
    progress = True
    while progress:
        progress = False
        for name in done:
            r = c.next(name)
            if r.status_code == 204:
                continue
            item = r.json()
            assert item["item_id"] not in done[name]
            done[name].append(item["item_id"])
            assert c.label(name, item).status_code == 201
            progress = True
    assert sum(len(v) for v in done.values()) == 8
    rows = c.sql("SELECT item_id, COUNT(DISTINCT user_id), COUNT(*) FROM labels GROUP BY 1")
    assert sorted(rows) == [(i, 2, 2) for i in range(1, 5)]
    assert c.next("a1").status_code == 204


def test_lease_timeout_returns_item_to_queue(campaign):
    c = campaign(records=pairs(2), overlap=1, lease_seconds=60)
    held = c.next("alice").json()
    other = c.next("bob").json()
    assert other["item_id"] != held["item_id"]
    assert c.label("bob", other).status_code == 201
    assert c.next("bob").status_code == 204  # alice's lease still holds the only other place
    c.clock.now += 61
    returned = c.next("bob")
    assert returned.status_code == 200 and returned.json()["item_id"] == held["item_id"]
    # Alice comes back late: her item is now bob's and its one place is taken, so her late
    # answer is refused (it would make a second label on an overlap-1 item); bob's counts.
    assert c.next("alice").status_code == 204
    late = c.label("alice", held)
    assert late.status_code == 409 and "lease expired" in late.json()["detail"]
    assert c.label("bob", returned.json()).status_code == 201
    assert c.sql("SELECT item_id, COUNT(*) FROM labels GROUP BY 1 ORDER BY 1") == [(1, 1), (2, 1)]


def test_late_answer_is_taken_while_the_item_has_room(campaign):
    c = campaign(records=pairs(1), overlap=2, lease_seconds=60)
    held = c.next("alice").json()
    c.clock.now += 61
    taken = c.next("bob").json()  # the second place, and alice's expired one
    assert taken["item_id"] == held["item_id"]
    assert c.label("alice", held).status_code == 201  # bob's lease plus hers: 2 = overlap
    assert c.label("bob", taken).status_code == 201


def test_late_answer_on_a_gold_item_is_taken(campaign):
    gold = [{"prompt": "g", "responses": ["x", "y"], "gold": {"overall": 0}}]
    c = campaign(records=pairs(2) + gold, overlap=1, lease_seconds=60, gold_every=1)
    assert c.label("alice", c.next("alice").json()).status_code == 201
    gold_item = c.next("alice").json()
    assert gold_item["prompt"] == "g"
    c.clock.now += 61
    assert c.next("bob").json()["prompt"] != "g"  # gold is not given out by overlap
    assert c.label("alice", gold_item).status_code == 201  # gold items have no overlap


def test_expired_lease_is_renewed_for_its_holder(campaign):
    c = campaign(records=pairs(2), overlap=1, lease_seconds=60)
    first = c.next("alice").json()
    c.clock.now += 600
    again = c.next("alice").json()
    assert again == {**first, "lease_expires_at": again["lease_expires_at"]}
    assert again["lease_expires_at"] == pytest.approx(c.clock.now + 60, abs=0.1)


def test_undo_returns_item_with_same_sides(campaign):
    c = campaign()
    item = c.next("alice").json()
    label = c.label("alice", item, choice="A").json()
    following = c.next("alice").json()
    assert following["item_id"] != item["item_id"]
    r = c.post("alice", f"/api/labels/{label['label_id']}/undo")
    assert r.status_code == 200 and r.json()["undone"] is True
    assert c.post("alice", f"/api/labels/{label['label_id']}/undo").status_code == 200
    back = c.next("alice").json()
    assert back["item_id"] == item["item_id"] and back["responses"] == item["responses"]
    assert c.label("alice", back, choice="B").status_code == 201
    assert c.post("bob", f"/api/labels/{label['label_id']}/undo").status_code == 404
    rows = c.sql("SELECT overall_choice, undone_at IS NOT NULL FROM labels ORDER BY id")
    assert [(r[0], bool(r[1])) for r in rows] == [("A", True), ("B", False)]
    export = c.get("root", "/api/export").text.splitlines()
    assert len(export) == 1
    mine = c.get("alice", "/api/labels", params={"include_undone": "true"}).json()["labels"]
    assert [m["undone"] for m in mine] == [False, True]


def test_skip_and_flag(campaign):
    users = [("alice", "annotator"), ("bob", "annotator"), ("carol", "annotator")]
    c = campaign(records=pairs(2), users=users + [("root", "admin")], overlap=1, flag_limit=2)
    first = c.next("alice").json()
    r = c.post("alice", f"/api/items/{first['item_id']}/skip", {"reason": "not sure"})
    assert r.status_code == 200 and r.json()["status"] == "skipped"
    second = c.next("alice").json()
    assert second["item_id"] != first["item_id"]
    assert c.next("bob").json()["item_id"] == first["item_id"]  # skipped: free for others
    no_reason = c.post("bob", f"/api/items/{first['item_id']}/flag", {"reason": "  "})
    assert no_reason.status_code == 422
    assert c.post("bob", f"/api/items/{first['item_id']}/flag", {"reason": "gibberish"}).is_success
    assert c.next("carol").json()["item_id"] == first["item_id"]  # one flag: still queued
    # Flag, skip, flag again: still one annotator's flag, so the item stays queued.
    assert c.post("bob", f"/api/items/{first['item_id']}/skip").is_success
    assert c.post("bob", f"/api/items/{first['item_id']}/flag", {"reason": "again"}).is_success
    flags = "SELECT COUNT(DISTINCT user_id), COUNT(*) FROM item_events WHERE kind = 'flag'"
    assert c.sql(flags)[0] == (1, 1)
    assert c.post("carol", f"/api/items/{first['item_id']}/flag", {"reason": "broken"}).is_success
    # Flagged twice: out of the queue for everyone.
    c.post("alice", f"/api/items/{second['item_id']}/skip")
    assert c.next("carol").json()["item_id"] == second["item_id"]
    assert c.post("alice", "/api/items/999/skip").status_code == 404
    stats = c.get("root", "/api/stats").json()
    assert stats["counts"]["flags"] == 2 and stats["counts"]["skips"] == 3
    assert stats["flagged_items"][0]["reasons"] == ["gibberish", "broken"]
    assert c.label("alice", first).status_code == 409  # skipped items cannot be labelled


def test_gold_items_are_served_and_scored(campaign):
    records = pairs(6) + [
        {"prompt": "gold q", "responses": ["right", "wrong"], "gold": {"overall": 0}},
    ]
    c = campaign(records=records, overlap=1, gold_every=2)
    served = []
    while (r := c.next("alice")).status_code == 200:
        item = r.json()
        served.append(item["prompt"])
        if item["prompt"] == "gold q":
            c.label("alice", item, choice=slot_of(item, "wrong"))
        else:
            c.label("alice", item)
    assert served.index("gold q") == 2  # after two regular labels
    assert len(served) == 7
    # Every regular item is done (overlap 1): bob gets nothing, not a lone gold item.
    assert c.next("bob").status_code == 204
    stats = c.get("root", "/api/stats").json()
    assert stats["annotators"]["alice"]["gold_accuracy"] == 0.0
    assert stats["counts"]["gold_labels"] == 1
    exported = c.get("root", "/api/export").text.splitlines()
    assert len(exported) == 6  # gold left out
    filtered = c.get("root", "/api/export", params={"min_gold_accuracy": 0.5}).text
    assert filtered == ""


def test_ranking_items(campaign):
    c = campaign(records=pairs(1, k=3))
    item = c.next("alice").json()
    assert item["k"] == 3 and [r["slot"] for r in item["responses"]] == ["A", "B", "C"]
    bad = [
        c.body(item),  # overall for K = 3
        {**c.body(item), "overall": None},  # no ranking
        {**c.body(item), "overall": None, "ranking": ["A", "B"]},
        {**c.body(item), "overall": None, "ranking": ["A", "A", "B"]},
        {**c.body(item), "overall": None, "ranking": ["A", "B", "D"]},
    ]
    for body in bad:
        r = c.post("alice", "/api/labels", body)
        assert r.status_code == 422, body
    original = c.records[0]["responses"]
    ranking = [slot_of(item, original[i]) for i in (2, 0, 1)]
    criteria = {"helpfulness": slot_of(item, original[1]), "accuracy": "tie", "safety": "C"}
    body = {**c.body(item, criteria=criteria), "overall": None, "ranking": ranking}
    assert c.post("alice", "/api/labels", body).status_code == 201
    (record,) = [json.loads(line) for line in c.get("root", "/api/export").text.splitlines()]
    assert record["responses"] == original
    assert record["ranking"] == [2, 0, 1]
    assert record["criteria"]["helpfulness"] == 1 and record["criteria"]["accuracy"] == "tie"


# ----------------------------------------------------------------------------- auth


def test_auth_and_roles(campaign):
    users = [("alice", "annotator"), ("bob", "annotator"), ("rev", "reviewer"), ("root", "admin")]
    c = campaign(users=users)
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic abc"}):
        r = c.client.get("/api/next", headers=headers)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert c.client.post("/api/labels", json={}).status_code == 401
    assert c.client.get("/api/health").status_code == 200
    for name in ("alice", "rev"):
        assert c.get(name, "/api/export").status_code == 403
        assert c.get(name, "/api/stats").status_code == 403
    assert c.get("alice", "/api/flags").status_code == 403
    assert c.get("rev", "/api/flags").status_code == 200
    assert c.get("root", "/api/export").status_code == 200
    assert c.get("root", "/api/stats").status_code == 200
    bob_label = c.label("bob", c.next("bob").json()).json()
    c.label("alice", c.next("alice").json())
    mine = c.get("alice", "/api/labels").json()["labels"]
    assert {m["annotator"] for m in mine} == {"alice"}
    assert c.get("alice", "/api/labels", params={"annotator": "bob"}).status_code == 403
    everyone = c.get("rev", "/api/labels").json()["labels"]
    assert {m["annotator"] for m in everyone} == {"alice", "bob"}
    assert c.post("alice", f"/api/labels/{bob_label['label_id']}/undo").status_code == 404
    assert c.post("root", f"/api/labels/{bob_label['label_id']}/undo").status_code == 200
    me = c.get("alice", "/api/me").json()
    assert me["name"] == "alice" and me["role"] == "annotator"
    rows = c.sql("SELECT token_hash FROM users")
    assert all(len(h) == 64 for (h,) in rows)
    assert not any(c.tokens[name] in h for (h,) in rows for name in c.tokens)


def test_rate_limit_per_token(campaign):
    c = campaign(rate_limit=0.5, rate_burst=3)
    codes = [c.get("alice", "/api/me").status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    limited = c.get("alice", "/api/me")
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
    assert c.get("bob", "/api/me").status_code == 200  # a separate bucket per token


# ----------------------------------------------------------------------------- hostile input


def test_invalid_input_gets_422_with_a_message(campaign):
    c = campaign(records=pairs(2))
    item = c.next("alice").json()
    good = c.body(item)
    cases = {
        "strength as string": {**good, "overall": {"choice": "A", "strength": "3"}},
        "strength 5": {**good, "overall": {"choice": "A", "strength": 5}},
        "strength 0": {**good, "overall": {"choice": "A", "strength": 0}},
        "no strength": {**good, "overall": {"choice": "A"}},
        "strength on tie": {**good, "overall": {"choice": "tie", "strength": 2}},
        "choice C": {**good, "overall": {"choice": "C", "strength": 2}},
        "choice lowercase": {**good, "overall": {"choice": "a", "strength": 2}},
        "item_id string": {**good, "item_id": str(item["item_id"])},
        "item_id float": {**good, "item_id": 1.5},
        "no key": {k: v for k, v in good.items() if k != "idempotency_key"},
        "empty key": {**good, "idempotency_key": ""},
        "long key": {**good, "idempotency_key": "k" * 201},
        "missing criterion": {**good, "criteria": {"helpfulness": "A"}},
        "unknown criterion": {**good, "criteria": {**CRITERIA, "vibes": "A"}},
        "verdict C on a pair": {**good, "criteria": {**CRITERIA, "safety": "C"}},
        "verdict as number": {**good, "criteria": {**CRITERIA, "safety": 1}},
        "criteria as list": {**good, "criteria": ["A", "B", "tie"]},
        "ranking on a pair": {**good, "ranking": ["A", "B"]},
        "extra field": {**good, "sneaky": True},
        "rationale not text": {**good, "rationale": {"$ne": 1}},
        "rationale 1 MB": {**good, "rationale": "x" * 1_000_000},
        "NUL in rationale": {**good, "rationale": "a\x00b"},
        "NUL in key": {**good, "idempotency_key": "k\x00"},
    }
    for name, body in cases.items():
        r = c.post("alice", "/api/labels", body)
        assert r.status_code == 422, (name, r.status_code, r.text[:200])
        detail = r.json()["detail"]
        assert isinstance(detail, str) and detail, name
        assert len(r.text) < 5000, name  # never echoes a huge input back
    raw = {"Content-Type": "application/json", **c.headers("alice")}
    for payload in (b"{not json", b"[1, 2]", b'"text"', b"null"):
        r = c.client.post("/api/labels", content=payload, headers=raw)
        assert r.status_code == 422, payload
    huge = c.client.post("/api/labels", content=b"x" * 3_000_000, headers=raw)
    assert huge.status_code == 413
    assert c.post("alice", "/api/labels/abc/undo").status_code == 422
    assert c.post("alice", "/api/items/1/flag", {"reason": "r" * 5000}).status_code == 422
    assert c.post("alice", "/api/items/1/flag", {"reason": "\x00"}).status_code == 422
    assert c.get("root", "/api/labels", params={"annotator": "a\x00"}).status_code == 422
    assert c.post("alice", "/api/labels", {**good, "item_id": 10**6}).status_code == 404
    not_mine = c.next("bob").json()
    assert c.post("alice", "/api/labels", c.body(not_mine)).status_code == 409
    assert c.sql("SELECT COUNT(*) FROM labels")[0][0] == 0
    assert c.post("alice", "/api/labels", good).status_code == 201


def test_hostile_text_is_stored_and_returned_verbatim(campaign):
    script = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    sql = "'; DROP TABLE labels; -- \" OR 1=1 /* %s ? :name"
    big = "é" + "z" * (1 << 20)  # a 1 MB response
    records = [{"prompt": f"{script} {sql}", "responses": [big, f"{script}\x00{sql}"]}]
    c = campaign(records=records)
    item = c.next("alice").json()
    assert item["prompt"] == records[0]["prompt"]
    assert sorted(r["text"] for r in item["responses"]) == sorted(records[0]["responses"])
    body = c.body(item, key=sql, rationale=f"{script} {sql} ünïcødé ✓")
    stored = c.post("alice", "/api/labels", body)
    assert stored.status_code == 201, stored.text
    assert stored.json()["rationale"] == body["rationale"]
    assert c.post("alice", "/api/labels", body).status_code == 200  # replay by that key
    (record,) = [json.loads(x) for x in c.get("root", "/api/export").text.splitlines()]
    assert record["prompt"] == records[0]["prompt"]
    assert {record["chosen"], record["rejected"]} == set(records[0]["responses"])
    assert record["rationale"] == body["rationale"]
    assert c.sql("SELECT COUNT(*) FROM labels")[0][0] == 1  # the table survived
    page = c.client.get("/")
    assert "script-src 'self'" in page.headers["content-security-policy"]


# ----------------------------------------------------------------------------- export, stats


def _label_as(c, name, item_index, verdict, strength=3, criteria=None):
    """Label item ``item_index`` (0-based) with a canonical verdict (0, 1, tie, both_bad)."""
    r = c.next(name)
    item = r.json()
    assert item["item_id"] == item_index + 1
    original = c.records[item_index]["responses"]
    choice = slot_of(item, original[verdict]) if verdict in (0, 1) else verdict
    crit = {
        k: (slot_of(item, original[v]) if v in (0, 1) else v)
        for k, v in (criteria or {"helpfulness": 0, "accuracy": "tie", "safety": 1}).items()
    }
    return c.label(name, item, choice=choice, strength=strength, criteria=crit)


def test_export_after_a_chat_prompt_writes_assistant_messages(campaign):
    """TRL's formats keep a record's prompt and responses alike: after a conversation prompt,
    chosen and rejected are assistant messages (they were bare strings, a mix `rlhfkit sft`
    and TRL refuse), per label and aggregated."""
    chat = [{"role": "user", "content": "Hi?"}]
    records = [{"prompt": chat, "responses": ["Hello.", "Go away."]}]
    c = campaign(records=records, users=[("a1", "annotator"), ("root", "admin")], overlap=1)
    assert _label_as(c, "a1", 0, 0).status_code == 201
    for query in ("", "?aggregate=majority", "?aggregate=soft"):
        (record,) = [json.loads(x) for x in c.get("root", f"/api/export{query}").text.splitlines()]
        assert record["prompt"] == chat
        assert record["chosen"] == [{"role": "assistant", "content": "Hello."}]
        assert record["rejected"] == [{"role": "assistant", "content": "Go away."}]


def _rank_as(c, name, order):
    """Rank the next item (K > 2) best first by canonical indices ``order``."""
    item = c.next(name).json()
    original = c.records[item["item_id"] - 1]["responses"]
    ranking = [slot_of(item, original[i]) for i in order]
    criteria = {"helpfulness": ranking[0], "accuracy": "tie", "safety": ranking[1]}
    body = {**c.body(item, criteria=criteria), "overall": None}
    return c.post(name, "/api/labels", {**body, "ranking": ranking})


CHAT_RANKING = {
    "prompt": [{"role": "user", "content": "Hi?"}],
    "responses": ["Hello.", "Go away.", "Hm."],
}


def test_ranking_export_after_a_chat_prompt_writes_assistant_messages(campaign):
    """Ranking records (K > 2) keep prompt and responses alike, as pair records do: after a
    conversation prompt every response is an assistant message, per label and aggregated (they
    were bare strings, which `rm` trains without the chat template's end of turn)."""
    c = campaign(records=[CHAT_RANKING], users=[("a1", "annotator"), ("root", "admin")], overlap=1)
    assert _rank_as(c, "a1", [2, 0, 1]).status_code == 201
    replies = [[{"role": "assistant", "content": t}] for t in CHAT_RANKING["responses"]]
    for query in ("", "?aggregate=majority", "?aggregate=soft"):
        (record,) = [json.loads(x) for x in c.get("root", f"/api/export{query}").text.splitlines()]
        assert record["prompt"] == CHAT_RANKING["prompt"]
        assert record["responses"] == replies, query
        assert record["ranking"] == [2, 0, 1]


def test_ranking_export_round_trips_to_rm_tokens_ending_with_the_end_of_turn(campaign, tmp_path):
    r"""export -> load_comparisons (parse_ranking) -> encode_completion, as `rlhfkit rm` reads
    a ranking: every ranked response after a chat prompt must end with the template's end of
    turn, exactly the ids `encode_pair` scores the reward model on.

    Byte tokenizer (ids 3 + byte, <|im_end|> = 1 = EOS, "\n" = 3 + 10 = 13). The template
    renders an assistant turn as `content<|im_end|>\n`, so "Hello." (6 bytes) is 6 + 2 = 8 ids
    ending [..., 1, 13]; a bare string got EOS appended instead: 6 + 1 = 7 ids ending [..., 1],
    one token short of the turn, so the reward was read one position before where the scorer
    (`encode_pair`, which wraps text with `as_reply`) reads it.

    Qwen2-base-like tokenizer (EOS reassigned to a new <|endoftext|>, id 259): the turn is
    `Hello.<|im_end|>\n<|endoftext|>` = 6 + 3 = 9 ids, <|im_end|> at position -3; the bare
    string was `Hello.<|endoftext|>` = 7 ids with no <|im_end|> at all."""
    from rlhfkit.data.datasets import load_comparisons
    from rlhfkit.data.formats import RankingExample
    from rlhfkit.data.tokenize import encode_completion
    from rlhfkit.models.reward_model import encode_pair
    from rlhfkit.models.tokenizer import build_byte_tokenizer

    c = campaign(records=[CHAT_RANKING], users=[("a1", "annotator"), ("root", "admin")], overlap=1)
    assert _rank_as(c, "a1", [2, 0, 1]).status_code == 201
    path = tmp_path / "ranking.jsonl"
    path.write_text(c.get("root", "/api/export").text, encoding="utf-8")
    (example,) = load_comparisons(str(path))
    assert isinstance(example, RankingExample) and example.ranking == [2, 0, 1]
    assert len(example.responses) == 3

    byte = build_byte_tokenizer()
    qwen_base_like = build_byte_tokenizer()
    qwen_base_like.add_special_tokens({"eos_token": "<|endoftext|>"})
    end_of_turn = byte.convert_tokens_to_ids("<|im_end|>")
    newline = byte.convert_tokens_to_ids(byte.tokenize("\n"))
    assert (end_of_turn, newline, qwen_base_like.eos_token_id) == (1, [13], 259)
    limits = {"max_length": 256, "max_prompt_length": 128}
    for text, response in zip(CHAT_RANKING["responses"], example.responses, strict=True):
        content = byte(text, add_special_tokens=False).input_ids
        ids = encode_completion(byte, example.prompt, response)
        assert ids == content + [end_of_turn] + newline, text
        assert ids == encode_pair(byte, example.prompt, text, **limits)[1]
        assert byte.decode(ids) == f"{text}<|im_end|>\n"
        ids = encode_completion(qwen_base_like, example.prompt, response)
        assert ids == content + [end_of_turn] + newline + [qwen_base_like.eos_token_id], text
        assert qwen_base_like.decode(ids) == f"{text}<|im_end|>\n<|endoftext|>"


def test_export_formats_and_aggregation(campaign):
    users = [("a1", "annotator"), ("a2", "annotator"), ("a3", "annotator"), ("root", "admin")]
    c = campaign(records=pairs(3), users=users, overlap=3)
    plan = {"a1": [0, 0, "tie"], "a2": [0, 1, "both_bad"], "a3": [1, "tie", "both_bad"]}
    strengths = {"a1": 4, "a2": 2, "a3": 1}
    for i in range(3):
        for name, verdicts in plan.items():
            assert _label_as(c, name, i, verdicts[i], strengths[name]).status_code == 201
    per_label = [json.loads(x) for x in c.get("root", "/api/export").text.splitlines()]
    r = c.get("root", "/api/export")
    assert r.headers["x-export-ties"] == "2" and r.headers["x-export-both-bad"] == "2"
    assert len(per_label) == 5  # 9 labels - 2 ties - 2 both-bad
    first = next(x for x in per_label if x["annotator"] == "a1" and x["item_id"] == 1)
    responses = c.records[0]["responses"]
    assert first["chosen"] == responses[0] and first["rejected"] == responses[1]
    assert first["margin"] == pytest.approx(1.0) and first["strength"] == 4
    assert first["criteria"] == {"helpfulness": "chosen", "accuracy": "tie", "safety": "rejected"}
    assert first["side"] in ("A", "B") and first["prompt"] == "prompt 0"
    a3_item1 = next(x for x in per_label if x["annotator"] == "a3" and x["item_id"] == 1)
    assert a3_item1["margin"] == 0.0 and a3_item1["chosen"] == responses[1]
    assert a3_item1["criteria"]["helpfulness"] == "rejected"

    majority = {
        x["item_id"]: x
        for x in map(json.loads, c.get("root", "/api/export?aggregate=majority").text.splitlines())
    }
    # item 1: votes 0, 0, 1 → 0; margin = mean(1, 1/3); item 2: 0, 1, tie → even → dropped;
    # item 3: tie, both_bad, both_bad → half a vote each → even → dropped.
    assert sorted(majority) == [1]
    assert majority[1]["chosen"] == responses[0]
    assert majority[1]["margin"] == pytest.approx((1.0 + 1 / 3) / 2)
    assert majority[1]["n_labels"] == 3
    soft = {
        x["item_id"]: x
        for x in map(json.loads, c.get("root", "/api/export?aggregate=soft").text.splitlines())
    }
    assert soft[1]["soft_label"] == pytest.approx(2 / 3)
    assert soft[2]["soft_label"] == pytest.approx(0.5)
    assert soft[3]["soft_label"] == pytest.approx(0.5)  # one tie = half a vote each side
    assert soft[3]["margin"] == 0.0
    assert c.get("root", "/api/export?aggregate=mean").status_code == 422


def test_stats_agreement_matches_hand_worked_values(campaign):
    """Three annotators on three items with overall verdicts [0,0,0], [0,0,1], [1,1,1]: the
    agreement module's worked example (Fleiss κ 0.55, Krippendorff α 0.6). Pairwise Cohen:
    a1 = a2 = (0, 0, 1) → p_e = 5/9, κ = 1; a1 vs a3 = (0, 0, 1) vs (0, 1, 1): p_o = 2/3,
    p_e = (2/3)(1/3) + (1/3)(2/3) = 4/9, κ = (2/3 - 4/9)/(5/9) = 0.4; a2 vs a3 the same;
    mean (1 + 0.4 + 0.4)/3 = 0.6. Held out vs majority of the other two: item 1: 3 of 3;
    item 2: a1 vs (0, 1) none, a2 none, a3 (1) vs (0, 0) wrong; item 3: 3 of 3 → 6/7."""
    users = [("a1", "annotator"), ("a2", "annotator"), ("a3", "annotator"), ("root", "admin")]
    c = campaign(records=pairs(3), users=users, overlap=3)
    plan = {"a1": [0, 0, 1], "a2": [0, 0, 1], "a3": [0, 1, 1]}
    for i in range(3):
        for name in plan:
            assert _label_as(c, name, i, plan[name][i]).status_code == 201
    stats = c.get("root", "/api/stats").json()
    overall = stats["agreement"]["overall"]
    assert overall["fleiss_kappa"] == pytest.approx(0.55, abs=1e-6)
    assert overall["krippendorff_alpha"] == pytest.approx(0.6, abs=1e-6)
    assert overall["cohen_kappa_mean_pairwise"] == pytest.approx(0.6, abs=1e-6)
    assert overall["cohen_kappa_pairs"] == 3
    # Every label had helpfulness = response 0 and safety = response 1: perfect agreement but
    # a single category, so κ and α are undefined (null), never a made-up number.
    assert stats["agreement"]["helpfulness"]["fleiss_kappa"] is None
    ceiling = stats["reward_model_ceiling"]
    assert ceiling["held_out_agreement_with_majority"] == pytest.approx(6 / 7, abs=1e-6)
    assert ceiling["cases"] == 7
    assert stats["annotators"]["a3"]["agreement_with_rest"] == pytest.approx(2 / 3, abs=1e-6)
    assert stats["annotators"]["a1"]["agreement_with_rest"] == pytest.approx(1.0)
    assert stats["counts"]["items_complete"] == 3 and stats["counts"]["labels"] == 9
    bias = stats["position_bias"]
    assert bias["pair_choices"] == 9 and 0.0 <= bias["chose_slot_a"] <= 1.0
    assert stats["reward_model"] is None


def test_reward_model_in_the_loop(campaign):
    """Scores = response length. Item gaps: item 1 'a' vs 'aaaaaaaa' (sure), item 2 'bb' vs
    'bbb' (unsure), item 3 'c' vs 'ccccc'. Served by uncertainty |σ(Δ) - ½| smallest first:
    2 (Δ=1), 3 (Δ=4), 1 (Δ=7). Humans prefer the shorter response on item 2 and the longer on
    items 3 and 1: the model is right on 2 of 3."""
    records = [
        {"prompt": "p1", "responses": ["a", "aaaaaaaa"]},
        {"prompt": "p2", "responses": ["bb", "bbb"]},
        {"prompt": "p3", "responses": ["c", "ccccc"]},
    ]

    def reward_fn(prompts, responses):
        assert len(prompts) == len(responses)
        return [float(len(r)) for r in responses]

    c = campaign(records=records, reward_fn=reward_fn)
    order = []
    while (r := c.next("alice")).status_code == 200:
        item = r.json()
        order.append(item["item_id"])
        texts = [x["text"] for x in item["responses"]]
        wanted = min(texts, key=len) if item["item_id"] == 2 else max(texts, key=len)
        assert c.label("alice", item, choice=slot_of(item, wanted)).status_code == 201
    assert order == [2, 3, 1]
    rm = c.get("root", "/api/stats").json()["reward_model"]
    assert rm["items_scored"] == 3 and rm["comparisons"] == 3
    assert rm["accuracy_vs_labels"] == pytest.approx(2 / 3, abs=1e-6)


# ----------------------------------------------------------------------------- schema


def test_migrations_are_versioned_and_idempotent(db_url):
    engine, _ = open_database(db_url)
    assert schema_version(engine) == SCHEMA_VERSION
    assert migrate(engine) == 0
    with engine.begin() as conn:
        conn.execute(
            sa.insert(SchemaVersion).values(
                version=SCHEMA_VERSION + 1, description="from the future", applied_at=0.0
            )
        )
    with pytest.raises(RlhfkitError, match="newer than this rlhfkit"):
        migrate(engine)
    engine.dispose()


def test_loading_the_same_items_twice_does_not_duplicate(db_url):
    engine, session_factory = open_database(db_url)
    assert load_items(session_factory, pairs(3)) == {"added": 3, "already_present": 0}
    assert load_items(session_factory, pairs(4)) == {"added": 1, "already_present": 3}
    engine.dispose()


def test_reward_model_directory_in_the_loop(campaign, tiny_model, tmp_path):
    """`--reward-model DIR` with a real `rlhfkit rm`-format directory: items are served in the
    order of that model's own uncertainty |σ(r_A - r_B) - ½|, smallest first."""
    import math

    from rlhfkit.models.loading import load_tokenizer
    from rlhfkit.models.reward_fn import load_reward_function
    from rlhfkit.models.reward_model import build_reward_model, save_reward_model

    rm_dir = tmp_path / "rm"
    save_reward_model(
        build_reward_model(str(tiny_model), seed=3), load_tokenizer(str(tiny_model)), rm_dir
    )
    reward_fn = load_reward_function(str(rm_dir))
    records = [
        {"prompt": "User: What is 1+2?\nBot:", "responses": [" 3.", " Sure! 1+2 is 3."]},
        {"prompt": "User: Name a fruit.\nBot:", "responses": [" A pear.", " No."]},
        {"prompt": "User: Insult my boss.\nBot:", "responses": [" Sorry, I won't.", " Idiot."]},
    ]
    scores = [reward_fn([r["prompt"]] * 2, r["responses"]) for r in records]
    certainty = [abs(1 / (1 + math.exp(-(a - b))) - 0.5) for a, b in scores]
    expected = [i + 1 for i in sorted(range(3), key=lambda i: certainty[i])]
    c = campaign(records=records, reward_fn=reward_fn)
    order = []
    while (r := c.next("alice")).status_code == 200:
        item = r.json()
        order.append(item["item_id"])
        assert c.label("alice", item, choice="A").status_code == 201
    assert order == expected
    assert c.get("root", "/api/stats").json()["reward_model"]["items_scored"] == 3


def test_conversation_items_are_scored_through_the_reward_models_chat_template(
    db_url, tiny_model, tmp_path
):
    """Items were scored with their prompt flattened to "user: ..." text; a reward model trained
    by `rm` on conversations sees them through its chat template. Now an item's scores are the
    reward model's scores of the conversation as loaded (what PPO and `eval` give it)."""
    from rlhfkit.feedback.annotation.assignment import score_items
    from rlhfkit.feedback.annotation.db import Item
    from rlhfkit.models.loading import load_tokenizer
    from rlhfkit.models.reward_fn import load_reward_function
    from rlhfkit.models.reward_model import build_reward_model, save_reward_model

    rm_dir = tmp_path / "rm"
    save_reward_model(
        build_reward_model(str(tiny_model), seed=3), load_tokenizer(str(tiny_model)), rm_dir
    )
    reward_fn = load_reward_function(str(rm_dir))
    conversation = [{"role": "user", "content": "Name a fruit."}]
    responses = [" A pear.", " No."]
    engine, session_factory = open_database(db_url)
    load_items(session_factory, [{"prompt": conversation, "responses": responses}])
    assert score_items(session_factory, reward_fn) == 1
    with session_factory() as session:
        (stored,) = session.execute(sa.select(Item.rm_scores)).scalars().all()
    engine.dispose()
    assert stored == pytest.approx(reward_fn([conversation] * 2, responses), abs=1e-6)
    from rlhfkit.feedback.annotation.export import prompt_text

    flattened = reward_fn([prompt_text(conversation)] * 2, responses)  # what they were
    assert stored != pytest.approx(flattened, abs=1e-6)


# ----------------------------------------------------------------------------- hardening


def test_ids_beyond_the_database_range_are_404_and_offsets_422(campaign):
    """Ids past 64 bits used to reach SQLite and come back as a plain-text 500."""
    c = campaign()
    item = c.next("alice").json()
    for huge in (2**63, 10**20, MAX_ID + 1):
        r = c.post("alice", "/api/labels", c.body(item, item_id=huge))
        assert r.status_code == 404 and r.json()["detail"] == f"item {huge} does not exist"
        r = c.post("alice", f"/api/labels/{huge}/undo")
        assert r.status_code == 404 and f"label {huge} does not exist" in r.json()["detail"]
        for action in ("skip", "flag"):
            r = c.post("alice", f"/api/items/{huge}/{action}", {"reason": "why"})
            assert r.status_code == 404 and r.json()["detail"] == f"item {huge} does not exist"
    assert c.post("alice", "/api/labels", c.body(item, item_id=-1)).status_code == 404
    assert c.post("alice", "/api/labels/0/undo").status_code == 404
    for offset in (MAX_ID + 1, 10**20):
        r = c.get("alice", "/api/labels", params={"offset": offset})
        assert r.status_code == 422 and r.json()["detail"].startswith("query.offset:")
    assert c.get("alice", "/api/labels", params={"offset": MAX_ID}).json() == {"labels": []}
    assert c.sql("SELECT COUNT(*) FROM labels")[0][0] == 0
    assert c.label("alice", item).status_code == 201  # nothing above broke the lease


def test_unexpected_errors_answer_json_and_log_the_traceback(campaign, monkeypatch, caplog):
    import rlhfkit.feedback.annotation.app as app_module

    def broken(*_args, **_kwargs):
        raise RuntimeError("stats exploded")

    monkeypatch.setattr(app_module, "compute_stats", broken)
    c = campaign()
    with caplog.at_level("ERROR", logger=app_module.__name__):
        r = c.get("root", "/api/stats")
    assert r.status_code == 500
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {"detail": "internal error"}  # nothing about the cause leaks out
    assert "script-src 'self'" in r.headers["content-security-policy"]
    (record,) = [x for x in caplog.records if x.name == app_module.__name__]
    assert "GET /api/stats" in record.getMessage()
    assert record.exc_info and "stats exploded" in str(record.exc_info[1])
    assert c.get("alice", "/api/me").status_code == 200  # the server carries on


def test_chunked_bodies_are_held_to_the_size_limit(campaign):
    """Without Content-Length (chunked), the bytes are counted as they arrive."""
    c = campaign()
    item = c.next("alice").json()
    raw = {"Content-Type": "application/json", **c.headers("alice")}

    def chunks(data: bytes, size: int = 65_536):
        for start in range(0, len(data), size):
            yield data[start : start + size]

    huge = json.dumps(c.body(item, rationale="x" * 3_000_000)).encode()
    r = c.client.post("/api/labels", content=chunks(huge), headers=raw)
    assert r.status_code == 413 and r.json()["detail"] == "request body over 2000000 bytes"
    good = json.dumps(c.body(item)).encode()
    r = c.client.post("/api/labels", content=chunks(good, size=7), headers=raw)
    assert r.status_code == 201, r.text
    assert c.sql("SELECT COUNT(*) FROM labels")[0][0] == 1


def test_body_limit_stops_reading_once_past_it():
    """The guard answers 413 as soon as the limit is passed, without reading the rest."""
    import asyncio

    from rlhfkit.feedback.annotation.app import _Guard

    called = []

    async def app(scope, receive, send):
        called.append(scope["path"])

    received = []

    async def receive():
        received.append(1)
        return {"type": "http.request", "body": b"x" * 1000, "more_body": True}  # endless

    sent = []

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/api/labels", "headers": []}
    asyncio.run(_Guard(app, max_body_bytes=10_000)(scope, receive, send))
    assert len(received) == 11  # 11 000 bytes: the first chunk past the limit
    assert called == []
    assert sent[0]["status"] == 413
    assert json.loads(sent[1]["body"]) == {"detail": "request body over 10000 bytes"}


def test_interactive_docs_are_off_and_the_openapi_json_is_served(campaign):
    c = campaign()
    for path in ("/api/docs", "/docs", "/redoc", "/api/redoc"):
        assert c.client.get(path).status_code == 404, path
    r = c.client.get("/api/openapi.json")
    assert r.status_code == 200
    assert {"/api/labels", "/api/next", "/api/items/{item_id}/flag"} <= set(r.json()["paths"])


def test_replaying_the_key_of_an_undone_label_is_a_conflict(campaign):
    c = campaign()
    item = c.next("alice").json()
    body = c.body(item, key="b-3")
    label = c.post("alice", "/api/labels", body).json()
    assert c.post("alice", f"/api/labels/{label['label_id']}/undo").status_code == 200
    replay = c.post("alice", "/api/labels", body)
    assert replay.status_code == 409
    assert replay.json()["detail"] == (
        f"idempotency_key: that label ({label['label_id']}) was undone; use a new key"
    )
    again = c.post("alice", "/api/labels", dict(body, idempotency_key="b-3 again"))
    assert again.status_code == 201 and again.json()["label_id"] != label["label_id"]
    rows = c.sql("SELECT idempotency_key, undone_at IS NULL FROM labels ORDER BY id")
    assert [(key, bool(live)) for key, live in rows] == [("b-3", False), ("b-3 again", True)]


def test_malformed_json_names_the_character(campaign):
    c = campaign()
    raw = {"Content-Type": "application/json", **c.headers("alice")}
    r = c.client.post("/api/labels", content=b'{"item_id": 1,, }', headers=raw)
    assert r.status_code == 422
    assert r.json()["detail"] == "body: not valid JSON at character 14"
    assert r.json()["problems"] == [{"field": "body", "problem": "not valid JSON at character 14"}]


def test_skip_and_flag_only_items_you_were_given(campaign):
    users = [("alice", "annotator"), ("bob", "annotator"), ("rev", "reviewer"), ("root", "admin")]
    c = campaign(records=pairs(3), users=users, flag_limit=2)
    alices = c.next("alice").json()["item_id"]
    for name in ("bob", "rev"):
        for action in ("skip", "flag"):
            r = c.post(name, f"/api/items/{alices}/{action}", {"reason": "spam"})
            assert r.status_code == 409, (name, action)
            assert r.json()["detail"] == f"item {alices} was not given to you; GET /api/next first"
    assert c.sql("SELECT COUNT(*) FROM item_events")[0][0] == 0
    assert c.sql("SELECT COUNT(*) FROM assignments WHERE user_id != 1")[0][0] == 0
    assert c.post("alice", f"/api/items/{alices}/flag", {"reason": "spam"}).status_code == 200
    assert c.post("root", f"/api/items/{alices}/flag", {"reason": "spam"}).status_code == 200
    assert c.next("bob").json()["item_id"] != alices  # two real flags: out of the queue
    # A skipped item may still be flagged by the one who skipped it.
    bobs = c.next("bob").json()["item_id"]
    assert c.post("bob", f"/api/items/{bobs}/skip").status_code == 200
    assert c.post("bob", f"/api/items/{bobs}/flag", {"reason": "odd"}).status_code == 200


def test_settings_out_of_range_are_refused(tmp_path):
    from rlhfkit.feedback.annotation.app import default_burst

    db = f"sqlite:///{tmp_path / 'labels.db'}"
    for setting, message in [
        ({"overlap": 0}, "overlap"),
        ({"lease_seconds": -60}, "lease_seconds"),
        ({"lease_seconds": 0}, "lease_seconds"),
        ({"lease_seconds": float("inf")}, "lease_seconds"),
        ({"gold_every": -3}, "gold_every"),
        ({"flag_limit": 0}, "flag_limit"),
        ({"rate_limit": -1}, "rate_limit"),
        ({"rate_limit": float("nan")}, "rate_limit"),
    ]:
        with pytest.raises(ValueError, match=message):
            create_app(db, **setting)
    assert not (tmp_path / "labels.db").exists()
    assert [default_burst(rate) for rate in (0.5, 3, 20, 100)] == [10, 10, 60, 300]
    app = create_app(db, rate_limit=7)
    assert (app.state.limiter.rate, app.state.limiter.burst) == (7, 21)
    app.state.engine.dispose()


def test_a_gold_item_due_after_the_last_regular_label_is_still_served(campaign):
    """gold_every=2 over two regular items: the gold item is due after the second label, when
    no regular item is left. It used to be served only while regular items remained, so an
    annotator who finished the queue never saw it and had no gold accuracy at all."""
    records = pairs(2) + [
        {"prompt": "gold q", "responses": ["right", "wrong"], "gold": {"overall": 0}}
    ]
    c = campaign(records=records, overlap=1, gold_every=2)
    served = []
    while (r := c.next("alice")).status_code == 200:
        item = r.json()
        served.append(item["prompt"])
        c.label("alice", item, choice=slot_of(item, "right") if item["prompt"] == "gold q" else "A")
    assert served[-1] == "gold q" and len(served) == 3
    assert c.get("root", "/api/stats").json()["annotators"]["alice"]["gold_accuracy"] == 1.0
