"""Storage of the annotation server: SQLAlchemy models, engine set-up and schema migrations.

SQLite (the default, ``sqlite:///labels.db``) runs in WAL mode with ``synchronous=FULL``, so a
submission that was acknowledged survives a killed server (and a power cut); every transaction
starts with ``BEGIN IMMEDIATE``, which serialises writers up front instead of failing with
"database is locked" when a reader upgrades. Within one process, transactions on a database
file also queue on a Python lock (:class:`_SerialisedSQLite`): otherwise twenty threads waiting
for SQLite's write lock poll it with SQLite's growing back-off sleeps, and latency explodes.
PostgreSQL is used through psycopg 3 (``postgresql://`` URLs are routed to it).

Schema versions are tracked in a small table of our own, ``rlhfkit_schema``: each entry of
:data:`MIGRATIONS` runs once, in a transaction, in order. The models below describe the latest
schema; a change to them must come with a new migration that brings an existing database there.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from rlhfkit.errors import DataError, RlhfkitError

ROLES = ("annotator", "reviewer", "admin")
MAX_RESPONSES = 8  # slots A..H; more is too many for a person to rank (and for the keyboard)
SLOTS = "ABCDEFGH"
# The largest id a row can have on both databases (PostgreSQL INTEGER is 32-bit): a larger id
# in a request names nothing, and SQLite cannot even bind one beyond 64 bits.
MAX_ID = 2**31 - 1

# Keys of PostgreSQL transaction-level advisory locks (pg_advisory_xact_lock).
LOCK_MIGRATE = 7_000_001
LOCK_ASSIGN = 7_000_002


class Base(DeclarativeBase):
    pass


class SchemaVersion(Base):
    __tablename__ = "rlhfkit_schema"
    version: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=False)
    description: Mapped[str] = mapped_column(sa.String(200))
    applied_at: Mapped[float] = mapped_column(sa.Float)


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(200), unique=True)
    role: Mapped[str] = mapped_column(sa.String(20))
    token_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    created_at: Mapped[float] = mapped_column(sa.Float)


class Item(Base):
    __tablename__ = "items"
    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    content_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    prompt: Mapped[object] = mapped_column(sa.JSON)  # str, or a list of chat messages
    responses: Mapped[list] = mapped_column(sa.JSON)  # list[str], original order
    k: Mapped[int] = mapped_column(sa.Integer)
    is_gold: Mapped[bool] = mapped_column(sa.Boolean, default=False, index=True)
    gold: Mapped[dict | None] = mapped_column(sa.JSON(none_as_null=True), nullable=True)
    source: Mapped[str] = mapped_column(sa.String(500), default="")
    source_line: Mapped[int] = mapped_column(sa.Integer, default=0)
    rm_scores: Mapped[list | None] = mapped_column(sa.JSON(none_as_null=True), nullable=True)
    uncertainty: Mapped[float | None] = mapped_column(sa.Float, nullable=True, index=True)
    created_at: Mapped[float] = mapped_column(sa.Float)


class Assignment(Base):
    """A lease of one item to one annotator; also records the sides that annotator saw."""

    __tablename__ = "assignments"
    __table_args__ = (
        sa.UniqueConstraint("item_id", "user_id", name="uq_assignment_item_user"),
        sa.Index("ix_assignment_item_status", "item_id", "status"),
        sa.Index("ix_assignment_user_status", "user_id", "status"),
    )
    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    item_id: Mapped[int] = mapped_column(sa.ForeignKey("items.id"))
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id"))
    # display_order[slot] = index into item.responses of the response shown in that slot.
    display_order: Mapped[list] = mapped_column(sa.JSON)
    # leased | labelled | skipped | flagged
    status: Mapped[str] = mapped_column(sa.String(16))
    leased_at: Mapped[float] = mapped_column(sa.Float)
    expires_at: Mapped[float] = mapped_column(sa.Float)


class Label(Base):
    __tablename__ = "labels"
    __table_args__ = (
        sa.UniqueConstraint("user_id", "idempotency_key", name="uq_label_user_key"),
        # One live label per (item, annotator); an undone label makes room for its replacement.
        sa.Index(
            "uq_label_item_user_live",
            "item_id",
            "user_id",
            unique=True,
            sqlite_where=sa.text("undone_at IS NULL"),
            postgresql_where=sa.text("undone_at IS NULL"),
        ),
    )
    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    item_id: Mapped[int] = mapped_column(sa.ForeignKey("items.id"), index=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id"), index=True)
    assignment_id: Mapped[int] = mapped_column(sa.ForeignKey("assignments.id"))
    idempotency_key: Mapped[str] = mapped_column(sa.String(200))
    request_hash: Mapped[str] = mapped_column(sa.String(64))
    # As the annotator saw them: slot letters ("A", "B", ...), "tie" or "both_bad".
    overall_choice: Mapped[str | None] = mapped_column(sa.String(10), nullable=True)
    strength: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)
    criteria: Mapped[dict] = mapped_column(sa.JSON)
    ranking: Mapped[list | None] = mapped_column(sa.JSON(none_as_null=True), nullable=True)
    display_order: Mapped[list] = mapped_column(sa.JSON)
    rationale: Mapped[str] = mapped_column(sa.Text, default="")
    is_gold: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    created_at: Mapped[float] = mapped_column(sa.Float)
    undone_at: Mapped[float | None] = mapped_column(sa.Float, nullable=True)
    response_json: Mapped[str] = mapped_column(sa.Text)  # the 201 body, replayed on a retry


class ItemEvent(Base):
    """A skip or a flag, with the annotator's reason."""

    __tablename__ = "item_events"
    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    item_id: Mapped[int] = mapped_column(sa.ForeignKey("items.id"), index=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id"))
    kind: Mapped[str] = mapped_column(sa.String(10))  # skip | flag
    reason: Mapped[str] = mapped_column(sa.Text, default="")
    created_at: Mapped[float] = mapped_column(sa.Float)


# --------------------------------------------------------------------------- migrations


def _migration_1(conn: Connection) -> None:
    tables = [User.__table__, Item.__table__, Assignment.__table__, Label.__table__]
    Base.metadata.create_all(conn, tables=[*tables, ItemEvent.__table__])


MIGRATIONS: list[tuple[int, str, Callable[[Connection], None]]] = [
    (1, "users, items, assignments, labels, item_events", _migration_1),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]


def migrate(engine: Engine) -> int:
    """Bring the database to :data:`SCHEMA_VERSION`; returns the number of migrations applied.

    Safe to call from several processes at once (PostgreSQL: an advisory lock; SQLite: the
    write lock taken by ``BEGIN IMMEDIATE``).
    """
    applied = 0
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": LOCK_MIGRATE})
        SchemaVersion.__table__.create(conn, checkfirst=True)
        current = conn.execute(sa.select(sa.func.max(SchemaVersion.version))).scalar() or 0
        if current > SCHEMA_VERSION:
            raise RlhfkitError(
                f"the database schema is at version {current}, newer than this rlhfkit "
                f"understands ({SCHEMA_VERSION}); upgrade rlhfkit"
            )
        for version, description, apply in MIGRATIONS:
            if version <= current:
                continue
            apply(conn)
            conn.execute(
                sa.insert(SchemaVersion).values(
                    version=version, description=description, applied_at=time.time()
                )
            )
            applied += 1
    return applied


def schema_version(engine: Engine) -> int:
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table(SchemaVersion.__tablename__):
            return 0
        return conn.execute(sa.select(sa.func.max(SchemaVersion.version))).scalar() or 0


# --------------------------------------------------------------------------- engine


def normalize_url(url: str) -> str:
    """``sqlite:///x.db`` as is; ``postgresql://`` and ``postgres://`` go to psycopg 3."""
    expected = (
        f"--db {redact_url(url)!r}: expected sqlite:///FILE.db or postgresql://USER:PASS@HOST/DB"
    )
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    if not (url.startswith("sqlite") or url.startswith("postgresql")):
        raise RlhfkitError(expected)
    try:
        sa.engine.make_url(url)
    except sa.exc.ArgumentError as exc:
        raise RlhfkitError(expected) from exc
    return url


_PASSWORD_IN_URL = re.compile(r"^([\w+.-]+://[^:/@]*):([^/]*)@")


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***``, for messages and logs."""
    return _PASSWORD_IN_URL.sub(r"\1:***@", url)


def _redact_message(message: str, url: str) -> str:
    """A driver's error message without the password of ``url``, should it quote it."""
    match = _PASSWORD_IN_URL.match(url)
    if match and match.group(2):
        message = message.replace(match.group(2), "***")
    return message


_FILE_LOCKS: dict[str, threading.Lock] = {}
_FILE_LOCKS_GUARD = threading.Lock()


def _file_lock(path: str) -> threading.Lock:
    key = os.path.realpath(path)
    with _FILE_LOCKS_GUARD:
        return _FILE_LOCKS.setdefault(key, threading.Lock())


class _SerialisedSQLite(sqlite3.Connection):
    """A sqlite3 connection whose transactions hold a per-file, per-process lock, taken before
    ``BEGIN IMMEDIATE`` (see ``make_engine``) and released once the commit or rollback is done."""

    file_lock: threading.Lock | None = None
    holds_lock = False

    def acquire(self) -> None:
        if self.file_lock is not None and not self.holds_lock:
            self.file_lock.acquire()
            self.holds_lock = True

    def release(self) -> None:
        if self.holds_lock:
            self.holds_lock = False
            self.file_lock.release()

    def commit(self) -> None:
        try:
            super().commit()
        finally:
            self.release()

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            self.release()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.release()


def make_engine(url: str, durable: bool = True) -> Engine:
    """An engine with the settings described in the module docstring.

    ``durable=False`` (SQLite only: ``synchronous=NORMAL``) is for throw-away databases such
    as the simulated annotators' temporary one: still safe against a killed process, not
    against a power cut.
    """
    url = normalize_url(url)
    if url.startswith("sqlite"):
        if url in ("sqlite://", "sqlite:///:memory:"):
            raise RlhfkitError("--db: an in-memory SQLite database would lose every label")
        db_path = sa.engine.make_url(url).database
        if db_path and not Path(db_path).parent.exists():
            raise RlhfkitError(f"--db {url}: folder {Path(db_path).parent} does not exist")
        file_lock = _file_lock(db_path) if db_path else None
        engine = sa.create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 60, "factory": _SerialisedSQLite},
            pool_size=4,
            max_overflow=28,
            pool_timeout=120,
        )

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn, _record):  # noqa: ANN001
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (below)
            dbapi_conn.file_lock = file_lock
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=60000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn):  # noqa: ANN001
            dbapi_conn = conn.connection.dbapi_connection
            dbapi_conn.acquire()
            try:
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            except BaseException:
                dbapi_conn.release()
                raise

        return engine
    try:
        return sa.create_engine(url, pool_size=10, max_overflow=30, pool_pre_ping=True)
    except ImportError as exc:  # the PostgreSQL driver is an optional dependency
        raise RlhfkitError(
            f"--db {redact_url(url)}: the PostgreSQL driver is not installed "
            f"({exc.name or exc}); install it with: pip install 'psycopg[binary]'"
        ) from exc


def _similar_files(path: Path) -> str:
    """`` (did you mean labels.db?)`` when a file beside ``path`` has a similar name."""
    try:
        names = [p.name for p in path.parent.iterdir() if p.is_file()]
    except OSError:
        return ""
    close = difflib.get_close_matches(path.name, names, n=1, cutoff=0.6)
    return f" (did you mean {path.parent / close[0]}?)" if close else ""


def require_existing(url: str) -> None:
    """Refuse a SQLite ``url`` whose file does not exist (read-only commands: a mistyped name
    would otherwise create an empty database and report nothing to do)."""
    if not normalize_url(url).startswith("sqlite"):
        return  # a PostgreSQL database that does not exist fails to connect anyway
    db_path = sa.engine.make_url(normalize_url(url)).database
    if db_path and not Path(db_path).is_file():
        raise RlhfkitError(f"--db {url}: no such database file{_similar_files(Path(db_path))}")


def open_database(
    url: str, durable: bool = True, create: bool = True
) -> tuple[Engine, sessionmaker]:
    """Engine + session factory for ``url``, migrated to the latest schema.

    ``create=False`` refuses a SQLite file that does not exist yet (see
    :func:`require_existing`). Connection errors become one line, the password left out.
    """
    if not create:
        require_existing(url)
    engine = make_engine(url, durable)
    try:
        migrate(engine)
    except sa.exc.DBAPIError as exc:
        engine.dispose()
        reason = " ".join(_redact_message(str(exc.orig), url).split())  # one line
        raise RlhfkitError(f"--db {redact_url(url)}: cannot open the database: {reason}") from exc
    return engine, sessionmaker(engine, expire_on_commit=False)


# --------------------------------------------------------------------------- users


def hash_token(token: str) -> str:
    """Tokens are 256 random bits, so one SHA-256 round is enough (no password stretching)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def add_user(session_factory: sessionmaker, name: str, role: str) -> str:
    """Create a user and return the token; only its hash is stored."""
    name = name.strip()
    if role not in ROLES:
        raise RlhfkitError(f"--role {role!r}: expected one of {', '.join(ROLES)}")
    if not name or len(name) > 200 or any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        raise RlhfkitError("NAME: 1 to 200 characters, no control characters")
    token = secrets.token_urlsafe(32)
    with session_factory.begin() as session:
        if session.scalar(sa.select(User.id).where(User.name == name)) is not None:
            raise RlhfkitError(f"a user named {name!r} already exists")
        session.add(
            User(name=name, role=role, token_hash=hash_token(token), created_at=time.time())
        )
    return token


# --------------------------------------------------------------------------- items


def _content_hash(prompt: object, responses: list[str]) -> str:
    blob = json.dumps([prompt, responses], ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _check_prompt(prompt: object, source: str, line: int) -> None:
    if isinstance(prompt, str):
        if not prompt.strip():
            raise DataError(source, line, "prompt", "empty")
        return
    if isinstance(prompt, list) and prompt:
        for i, message in enumerate(prompt):
            if not (
                isinstance(message, dict)
                and isinstance(message.get("role"), str)
                and isinstance(message.get("content"), str)
            ):
                raise DataError(
                    source, line, f"prompt[{i}]", 'expected {"role": str, "content": str}'
                )
        return
    raise DataError(source, line, "prompt", "expected a string or a list of chat messages")


def _check_gold(gold: object, k: int, source: str, line: int) -> dict:
    """``{"overall": 0|1|"tie"|"both_bad"}`` for K = 2, ``{"ranking": [...]}`` for K > 2."""
    if not isinstance(gold, dict):
        raise DataError(source, line, "gold", "expected an object")
    if k == 2:
        overall = gold.get("overall")
        if overall not in (0, 1, "tie", "both_bad") or isinstance(overall, bool):
            raise DataError(source, line, "gold.overall", 'expected 0, 1, "tie" or "both_bad"')
        return {"overall": overall}
    ranking = gold.get("ranking")
    if not isinstance(ranking, list) or sorted(ranking) != list(range(k)):
        raise DataError(source, line, "gold.ranking", f"expected a permutation of 0..{k - 1}")
    return {"ranking": ranking}


def parse_pairs_file(path: str | Path) -> tuple[list[dict], dict[str, int]]:
    """Read ``generate`` output: ``{"prompt", "responses": [str, ...]}`` per line.

    Optional ``"gold"`` marks an attention-check item with a known answer (see
    :func:`_check_gold`). Returns (records, skipped counts); malformed lines raise
    :class:`DataError` ``file:line: field: problem``.
    """
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise RlhfkitError(f"{source}: no such file")
    records: list[dict] = []
    skipped = {"identical_responses": 0, "blank_lines": 0}
    with path.open("rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise DataError(source, line_no, None, "not valid UTF-8") from None
            if not line.strip():
                skipped["blank_lines"] += 1
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(source, line_no, None, f"not valid JSON ({exc.msg})") from exc
            if not isinstance(record, dict):
                raise DataError(source, line_no, None, "expected a JSON object")
            if "prompt" not in record:
                raise DataError(source, line_no, "prompt", "missing")
            _check_prompt(record["prompt"], source, line_no)
            responses = record.get("responses")
            if not isinstance(responses, list) or not all(isinstance(r, str) for r in responses):
                raise DataError(source, line_no, "responses", "expected a list of strings")
            if not 2 <= len(responses) <= MAX_RESPONSES:
                raise DataError(
                    source,
                    line_no,
                    "responses",
                    f"{len(responses)} responses; annotation takes 2 to {MAX_RESPONSES}",
                )
            if len(set(responses)) < len(responses):
                skipped["identical_responses"] += 1
                continue
            item = {
                "prompt": record["prompt"],
                "responses": responses,
                "source": source,
                "source_line": line_no,
            }
            if record.get("gold") is not None:
                item["gold"] = _check_gold(record["gold"], len(responses), source, line_no)
            records.append(item)
    return records, skipped


def load_items(session_factory: sessionmaker, records: Iterable[dict]) -> dict[str, int]:
    """Insert items not already in the database (same prompt and responses = same item)."""
    added = existing = 0
    now = time.time()
    with session_factory.begin() as session:
        known = set(session.scalars(sa.select(Item.content_hash)))
        for record in records:
            digest = _content_hash(record["prompt"], record["responses"])
            if digest in known:
                existing += 1
                continue
            known.add(digest)
            session.add(
                Item(
                    content_hash=digest,
                    prompt=record["prompt"],
                    responses=list(record["responses"]),
                    k=len(record["responses"]),
                    is_gold=record.get("gold") is not None,
                    gold=record.get("gold"),
                    source=str(record.get("source", ""))[:500],
                    source_line=int(record.get("source_line", 0)),
                    created_at=now,
                )
            )
            added += 1
    return {"added": added, "already_present": existing}


def issue_token(session_factory: sessionmaker, name: str, role: str) -> str:
    """A fresh token for ``name``: creates the user, or replaces the token of an existing one
    (the old token stops working). Used by the simulated annotators, who rejoin a campaign."""
    if role not in ROLES:
        raise RlhfkitError(f"role {role!r}: expected one of {', '.join(ROLES)}")
    token = secrets.token_urlsafe(32)
    with session_factory.begin() as session:
        user = session.scalars(sa.select(User).where(User.name == name)).first()
        if user is None:
            session.add(
                User(name=name, role=role, token_hash=hash_token(token), created_at=time.time())
            )
        else:
            user.token_hash = hash_token(token)
            user.role = role
    return token
