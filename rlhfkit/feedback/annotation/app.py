"""The annotation server: a FastAPI app with the JSON API under ``/api`` and the labelling page.

``create_app(db_url, ...)`` builds it; ``rlhfkit annotate serve`` runs it under uvicorn. Every
``/api`` route but ``/api/health`` needs ``Authorization: Bearer TOKEN`` (tokens come from
``rlhfkit annotate add-user``; only their SHA-256 is stored). Roles: an ``annotator`` labels
and sees only their own labels; a ``reviewer`` may also read everyone's labels and the flags;
an ``admin`` may also export and read the statistics.

Status codes: 201 label stored, 200 replayed/done, 204 nothing left to label, 401 no or
unknown token, 403 role lacks the right, 404 unknown item/label, 409 conflicts with the state
(not your item, already labelled, lease expired and the item given to others, idempotency key
reused for another body or for an undone label), 413 body over the size limit (however it is
sent: ``Content-Length`` or chunked), 422 invalid input (``{"detail": "field: problem"}``),
429 rate limit (with ``Retry-After``), 500 ``{"detail": "internal error"}`` (the traceback goes
to the server's log, never to the client).

The OpenAPI description is served at ``/api/openapi.json``; there is no interactive docs page,
because FastAPI's loads its scripts from a CDN (the server needs no internet access, and its
content security policy would block them anyway).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import sqlalchemy as sa
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles

from .assignment import Assigner, AssignmentPolicy, score_items
from .criteria import Rubric, load_rubric
from .db import MAX_ID, SLOTS, Item, Label, User, hash_token, open_database
from .export import AGGREGATES, export_records, to_jsonl
from .labels import ApiError, LabelIn, ReasonIn, label_json, skip_or_flag, submit_label, undo_label
from .stats import compute_stats

LOGGER = logging.getLogger(__name__)
STATIC_DIR = Path(__file__).parent / "static"
ROLE_RANK = {"annotator": 0, "reviewer": 1, "admin": 2}

SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        b"connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]


class _BodyTooLarge(Exception):
    """The request body went past the limit while it was being read."""


async def _read_body(receive, limit: int) -> bytes | None:
    """The whole request body, counted as it arrives (``Content-Length`` or chunked alike).

    Raises _BodyTooLarge as soon as more than ``limit`` bytes came in, without reading the
    rest; None when the client disconnected first.
    """
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replaying(body: bytes, receive):
    """An ASGI ``receive`` that hands over ``body`` once, then defers to ``receive``."""
    delivered = False

    async def replay():
        nonlocal delivered
        if delivered:
            return await receive()
        delivered = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


class _Guard:
    """ASGI middleware: refuses bodies over ``max_body_bytes`` (413), adds security headers,
    and answers an unexpected error with a JSON 500, logging its traceback."""

    def __init__(self, app, max_body_bytes: int):
        self.app = app
        self.max_body_bytes = max_body_bytes

    def _declared_too_large(self, scope) -> bool:
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit():
                return int(value) > self.max_body_bytes
        return False

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def send_with_headers(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = list(message.get("headers", [])) + SECURITY_HEADERS
            await send(message)

        async def answer(status: int, detail: str):
            await JSONResponse({"detail": detail}, status)(scope, receive, send_with_headers)

        too_large = f"request body over {self.max_body_bytes} bytes"
        if self._declared_too_large(scope):
            return await answer(413, too_large)
        try:
            body = await _read_body(receive, self.max_body_bytes)
        except _BodyTooLarge:
            return await answer(413, too_large)
        if body is None:
            return None  # the client is gone
        try:
            await self.app(scope, _replaying(body, receive), send_with_headers)
        except Exception:
            LOGGER.exception("unexpected error in %s %s", scope["method"], scope["path"])
            if started:
                raise  # too late for a clean answer; the server drops the connection
            await answer(500, "internal error")


class RateLimiter:
    """A token bucket per API token: ``rate`` requests a second on average, bursts of ``burst``."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic):
        self.rate, self.burst, self.clock = rate, burst, clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def retry_after(self, key: str) -> float:
        """0 if the request may go ahead (and is counted), else seconds to wait."""
        if self.rate <= 0:
            return 0.0
        now = self.clock()
        with self._lock:
            tokens, last = self._buckets.get(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.rate


def default_burst(rate_limit: float) -> int:
    """The rate limiter's burst for ``rate_limit`` requests/s: three seconds' worth, at least
    10 (opening the page alone takes a few requests)."""
    return max(10, int(rate_limit * 3))


def _problem(error: dict) -> dict:
    """One validation error as ``{"field", "problem"}``."""
    if error.get("type") == "json_invalid":
        # FastAPI puts the character offset where a field name goes: ("body", 13).
        offset = error.get("loc", ("body", "?"))[-1]
        return {"field": "body", "problem": f"not valid JSON at character {offset}"}
    loc = [str(part) for part in error.get("loc", ()) if part not in ("body",)]
    return {"field": ".".join(loc) or "body", "problem": error.get("msg", "")}


def _validation_message(exc: RequestValidationError) -> tuple[str, list[dict]]:
    """``"field: problem; ..."`` (the first five) and every problem, for a 422 answer."""
    problems = [_problem(error) for error in exc.errors()]
    message = "; ".join(f"{p['field']}: {p['problem']}" for p in problems[:5])
    return message or "invalid request", problems


def _check_settings(
    overlap: int, lease_seconds: float, gold_every: int, flag_limit: int, rate_limit: float
) -> None:
    """ValueError for settings that would break the campaign's rules."""
    if overlap < 1:
        raise ValueError("overlap must be at least 1")
    if not (math.isfinite(lease_seconds) and lease_seconds > 0):
        raise ValueError("lease_seconds must be a positive number")
    if gold_every < 0:
        raise ValueError("gold_every must be 0 (never) or more")
    if flag_limit < 1:
        raise ValueError("flag_limit must be at least 1")
    if not (math.isfinite(rate_limit) and rate_limit >= 0):
        raise ValueError("rate_limit must be 0 (off) or a positive number")


def create_app(
    db_url: str,
    *,
    rubric: Rubric | None = None,
    criteria_file: str | Path | None = None,
    overlap: int = 1,
    lease_seconds: float = 1800.0,
    gold_every: int = 10,
    flag_limit: int = 2,
    reward_fn: Callable[[list[str], list[str]], list[float]] | None = None,
    rate_limit: float = 20.0,
    rate_burst: int | None = None,
    seed: int | None = None,
    clock: Callable[[], float] | None = None,
    max_body_bytes: int = 2_000_000,
    durable: bool = True,
) -> FastAPI:
    """Build the annotation app over the database at ``db_url`` (migrated on the way in).

    Args:
        db_url: ``sqlite:///FILE.db`` or ``postgresql://USER:PASS@HOST/DB``.
        rubric / criteria_file: the criteria (default helpfulness, accuracy, safety).
        overlap: labels per item, from distinct annotators.
        lease_seconds: an unanswered lease returns its item to the queue after this long.
        gold_every: serve a gold item after every N regular labels of an annotator (0: never).
        flag_limit: an item flagged by this many annotators leaves the queue.
        reward_fn: ``(prompts, responses) -> rewards``; items it is least sure about go
            first, and the stats report its accuracy against the labels.
        rate_limit / rate_burst: per-token token bucket (requests/s, burst); 0 disables.
            The burst defaults to :func:`default_burst` of the rate.
        seed: seed of the side shuffling (None: unpredictable).
        clock: time source (tests); default ``time.time``.
        max_body_bytes: larger request bodies get 413.
        durable: False only for throw-away SQLite databases (see ``db.make_engine``).

    Raises:
        ValueError: a setting out of range (negative lease, gold_every, rate limit...).
    """
    _check_settings(overlap, lease_seconds, gold_every, flag_limit, rate_limit)
    rubric = rubric or load_rubric(criteria_file)
    clock = clock or time.time
    engine, session_factory = open_database(db_url, durable)
    if reward_fn is not None:
        score_items(session_factory, reward_fn)
    policy = AssignmentPolicy(
        overlap=overlap, lease_seconds=lease_seconds, gold_every=gold_every, flag_limit=flag_limit
    )
    assigner = Assigner(policy, seed=seed, clock=clock)
    limiter = RateLimiter(
        rate_limit, default_burst(rate_limit) if rate_burst is None else rate_burst
    )
    user_cache: dict[str, tuple[float, User]] = {}
    cache_lock = threading.Lock()

    app = FastAPI(
        title="rlhfkit annotation server",
        docs_url=None,  # FastAPI's docs page loads from a CDN; see the module docstring
        openapi_url="/api/openapi.json",
        redoc_url=None,
    )
    app.state.engine = engine
    app.state.session_factory = session_factory
    app.state.rubric = rubric
    app.state.policy = policy
    app.state.reward_fn = reward_fn
    app.state.limiter = limiter

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError):
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse({"detail": exc.message}, exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError):
        message, problems = _validation_message(exc)
        return JSONResponse({"detail": message, "problems": problems}, 422)

    def current_user(request: Request) -> User:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or len(token) > 200:
            raise ApiError(401, "missing token: send Authorization: Bearer TOKEN")
        digest = hash_token(token)
        now = time.monotonic()
        with cache_lock:
            cached = user_cache.get(digest)
        if cached is not None and now - cached[0] < 60.0:
            user = cached[1]
        else:
            with session_factory() as session:
                user = session.scalars(sa.select(User).where(User.token_hash == digest)).first()
                if user is not None:
                    session.expunge(user)
            if user is None:
                raise ApiError(401, "unknown token")
            with cache_lock:
                user_cache[digest] = (now, user)
        wait = limiter.retry_after(digest)
        if wait > 0:
            raise _RateLimited(wait)
        return user

    class _RateLimited(Exception):
        def __init__(self, wait: float):
            self.wait = wait

    @app.exception_handler(_RateLimited)
    async def _rate_limited(_request: Request, exc: _RateLimited):
        return JSONResponse(
            {"detail": "rate limit: too many requests with this token; slow down"},
            429,
            headers={"Retry-After": str(max(1, math.ceil(exc.wait)))},
        )

    def requires(role: str):
        def check(user: User = Depends(current_user)) -> User:
            if ROLE_RANK[user.role] < ROLE_RANK[role]:
                raise ApiError(403, f"this needs the {role} role; you are {user.role}")
            return user

        return check

    def progress(session, user: User) -> dict:
        return assigner.progress(session, user.id)

    # ------------------------------------------------------------------ page

    @app.get("/", include_in_schema=False)
    def index():
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon():
        return FileResponse(STATIC_DIR / "favicon.svg", media_type="image/svg+xml")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    # ------------------------------------------------------------------ API

    @app.get("/api/health")
    def health():
        return {"ok": True}

    @app.get("/api/config")
    def config(user: User = Depends(current_user)):
        return {**rubric.as_json(), "user": {"name": user.name, "role": user.role}}

    @app.get("/api/me")
    def me(user: User = Depends(current_user)):
        with session_factory() as session:
            return {"name": user.name, "role": user.role, "progress": progress(session, user)}

    criteria_json = rubric.as_json()["criteria"]
    items = Item.__table__
    item_for_page = sa.select(items.c.prompt, items.c.responses, items.c.k).where(
        items.c.id == sa.bindparam("item_id")
    )

    @app.get("/api/next")
    def next_item(user: User = Depends(current_user)):
        with session_factory.begin() as session:
            lease = assigner.next_for(session, user.id)
            if lease is None:
                return Response(status_code=204)
            prompt, responses, k = session.execute(item_for_page, {"item_id": lease.item_id}).one()
            body = {
                "item_id": lease.item_id,
                "prompt": prompt,
                "responses": [
                    {"slot": SLOTS[slot], "text": responses[index]}
                    for slot, index in enumerate(lease.display_order)
                ],
                "k": k,
                "criteria": criteria_json,
                "lease_expires_at": lease.expires_at,
                "progress": progress(session, user),
            }
        return JSONResponse(body)

    @app.post("/api/labels", status_code=201)
    def post_label(body: LabelIn, user: User = Depends(current_user)):
        status, payload = submit_label(
            session_factory, user, body, rubric, overlap=policy.overlap, now=clock()
        )
        return JSONResponse(payload, status)

    @app.get("/api/labels")
    def list_labels(
        user: User = Depends(current_user),
        annotator: str | None = None,
        include_undone: bool = False,
        limit: int = Query(100, ge=1, le=1000),
        offset: int = Query(0, ge=0, le=MAX_ID),
    ):
        if annotator is not None and "\x00" in annotator:
            raise ApiError(422, "annotator: contains a NUL character")
        query = sa.select(Label, User.name).join(User, User.id == Label.user_id)
        if ROLE_RANK[user.role] < ROLE_RANK["reviewer"]:
            if annotator not in (None, user.name):
                raise ApiError(403, "annotators see only their own labels")
            query = query.where(Label.user_id == user.id)
        elif annotator is not None:
            query = query.where(User.name == annotator)
        if not include_undone:
            query = query.where(Label.undone_at.is_(None))
        query = query.order_by(Label.id.desc()).limit(limit).offset(offset)
        with session_factory() as session:
            rows = session.execute(query).all()
        return {"labels": [label_json(label, name) for label, name in rows]}

    @app.post("/api/labels/{label_id}/undo")
    def undo(label_id: int, user: User = Depends(current_user)):
        return undo_label(session_factory, user, label_id, policy.lease_seconds, now=clock())

    @app.post("/api/items/{item_id}/skip")
    def skip(item_id: int, body: ReasonIn | None = None, user: User = Depends(current_user)):
        reason = body.reason if body else ""
        return skip_or_flag(session_factory, user, item_id, "skip", reason, now=clock())

    @app.post("/api/items/{item_id}/flag")
    def flag(item_id: int, body: ReasonIn, user: User = Depends(current_user)):
        return skip_or_flag(session_factory, user, item_id, "flag", body.reason, now=clock())

    @app.get("/api/export")
    def export(
        _user: User = Depends(requires("admin")),
        aggregate: Literal["none", "majority", "soft"] = "none",
        include_gold: bool = False,
        min_gold_accuracy: float | None = Query(None, ge=0.0, le=1.0),
    ):
        assert aggregate in AGGREGATES
        records, summary = export_records(
            session_factory, aggregate, include_gold, min_gold_accuracy
        )
        headers = {f"X-Export-{k.replace('_', '-')}": str(v) for k, v in summary.items()}
        return PlainTextResponse(
            to_jsonl(records), media_type="application/x-ndjson", headers=headers
        )

    @app.get("/api/stats")
    def stats(_user: User = Depends(requires("admin"))):
        return compute_stats(session_factory, rubric.names, policy.overlap)

    @app.get("/api/flags")
    def flags(_user: User = Depends(requires("reviewer"))):
        return {"flagged_items": compute_stats(session_factory, rubric.names)["flagged_items"]}

    app.add_middleware(_Guard, max_body_bytes=max_body_bytes)
    return app
