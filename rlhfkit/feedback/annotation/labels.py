"""Submitting, replaying and undoing labels; skipping and flagging items.

A label is stored as the annotator saw it (slot letters, with the shuffled ``display_order``
of that annotator's assignment), so position bias can be measured; :func:`canonical` maps a
slot verdict back to an index into the item's original ``responses``.

Idempotency: ``(annotator, idempotency_key)`` is unique. A retry with the same key and the
same body gets the stored 201 body back with status 200 and stores nothing; the same key with
a different body, or the key of a label that was undone since, is a 409. Concurrent duplicates
are settled by the database's unique constraints, never by a check-then-insert race.

Leases: an answer that comes after the annotator's lease expired is still taken while the item
has room, and refused (409) once the item went to enough other annotators to fill its overlap.
Skips and flags are for items served to (or labelled by) the annotator; admins may skip or
flag any item.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Annotated, Literal

import sqlalchemy as sa
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt, StrictStr
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import sessionmaker

from .assignment import HAS_ROOM_SQL
from .criteria import Rubric
from .db import LOCK_ASSIGN, MAX_ID, SLOTS, Assignment, Item, ItemEvent, Label, User

LABELS = Label.__table__
ASSIGNMENTS = Assignment.__table__
ITEMS = Item.__table__
# Hot-path statements, built once: building them per request cost more than running them.
_L, _A, _I = LABELS.c, ASSIGNMENTS.c, ITEMS.c
STORED_BY_KEY = sa.select(_L.id, _L.request_hash, _L.response_json, _L.undone_at).where(
    _L.user_id == sa.bindparam("user_id"), _L.idempotency_key == sa.bindparam("key")
)
ITEM_FOR_LABEL = sa.select(_I.id, _I.k, _I.is_gold).where(_I.id == sa.bindparam("item_id"))
ASSIGNMENT_OF = sa.select(_A.id, _A.status, _A.display_order, _A.expires_at).where(
    _A.item_id == sa.bindparam("item_id"), _A.user_id == sa.bindparam("user_id")
)
INSERT_LABEL = sa.insert(LABELS).returning(_L.id)
MARK_LABELLED = (
    sa.update(ASSIGNMENTS).where(_A.id == sa.bindparam("assignment_id")).values(status="labelled")
)
MAX_RATIONALE = 10_000
MAX_REASON = 2_000
SPECIAL_VERDICTS = ("tie", "both_bad")


class ApiError(Exception):
    """An error with an HTTP status and a message for the client."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def check_id(kind: str, value: int) -> int:
    """``value``, or ApiError(404) when no row can have that id (it is beyond ``MAX_ID``, which
    the database could not even look up, or not positive)."""
    if not 1 <= value <= MAX_ID:
        raise ApiError(404, f"{kind} {value} does not exist")
    return value


def _no_nul(text: str) -> str:
    # PostgreSQL text cannot hold NUL; refuse it everywhere so both databases behave alike.
    if "\x00" in text:
        raise ValueError("contains a NUL character")
    return text


Text = Annotated[StrictStr, AfterValidator(_no_nul)]


class OverallIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    choice: Literal["A", "B", "tie", "both_bad"]
    strength: StrictInt | None = Field(default=None, ge=1, le=4)


class LabelIn(BaseModel):
    """Body of ``POST /api/labels``."""

    model_config = ConfigDict(extra="forbid")
    item_id: StrictInt
    idempotency_key: Text = Field(min_length=1, max_length=200)
    overall: OverallIn | None = None
    criteria: dict[StrictStr, StrictStr] = Field(default_factory=dict)
    ranking: list[StrictStr] | None = None
    rationale: Text = Field(default="", max_length=MAX_RATIONALE)


class ReasonIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: Text = Field(default="", max_length=MAX_REASON)


def slot_index(slot: str) -> int:
    return SLOTS.index(slot)


def canonical(verdict: str, display_order: list[int]) -> int | str:
    """A slot letter → the index of that response in the item's original order."""
    if verdict in SPECIAL_VERDICTS:
        return verdict
    return display_order[slot_index(verdict)]


def validate_label(body: LabelIn, k: int, rubric: Rubric) -> None:
    """Checks that depend on the item (K) and the rubric; raises ApiError(422)."""
    slots = list(SLOTS[:k])
    if k == 2:
        if body.overall is None:
            raise ApiError(422, "overall: required for a pair (choice and strength)")
        if body.ranking is not None:
            raise ApiError(422, "ranking: only for items with more than two responses")
        choice, strength = body.overall.choice, body.overall.strength
        if choice in ("A", "B") and strength is None:
            raise ApiError(422, "overall.strength: required (1-4) when A or B is preferred")
        if choice in SPECIAL_VERDICTS and strength is not None:
            raise ApiError(422, f"overall.strength: must be omitted when the choice is {choice}")
    else:
        if body.overall is not None:
            raise ApiError(422, f"overall: not used with {k} responses; send ranking")
        if body.ranking is None:
            raise ApiError(422, f"ranking: required with {k} responses (slot letters, best first)")
        if sorted(body.ranking) != slots:
            raise ApiError(
                422, f"ranking: expected each of {', '.join(slots)} exactly once, best first"
            )
    allowed = [*slots, *SPECIAL_VERDICTS]
    missing = [name for name in rubric.names if name not in body.criteria]
    if missing:
        raise ApiError(422, f"criteria: missing {', '.join(missing)}")
    for name, verdict in body.criteria.items():
        if name not in rubric.names:
            raise ApiError(
                422, f"criteria: unknown criterion {name[:60]!r}; expected {rubric.names}"
            )
        if verdict not in allowed:
            raise ApiError(
                422, f"criteria.{name}: {verdict[:60]!r} is not one of {', '.join(allowed)}"
            )


def _request_hash(body: LabelIn) -> str:
    blob = json.dumps(body.model_dump(), sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def label_json(label: Label, annotator: str) -> dict:
    return {
        "label_id": label.id,
        "item_id": label.item_id,
        "annotator": annotator,
        "overall": (
            {"choice": label.overall_choice, "strength": label.strength}
            if label.overall_choice is not None
            else None
        ),
        "criteria": label.criteria,
        "ranking": label.ranking,
        "rationale": label.rationale,
        "display_order": label.display_order,
        "created_at": label.created_at,
        "undone": label.undone_at is not None,
    }


def _replayed(stored, digest: str) -> tuple[int, dict]:
    """200 and the stored body; 409 when the key came with a different body, or when its label
    was undone (replaying ``"undone": false`` would claim a label that no longer counts)."""
    label_id, request_hash, response_json, undone_at = stored
    if request_hash != digest:
        raise ApiError(
            409, "idempotency_key: already used for a different label; use a new key per label"
        )
    if undone_at is not None:
        raise ApiError(409, f"idempotency_key: that label ({label_id}) was undone; use a new key")
    return 200, {"label_id": label_id, **json.loads(response_json)}


def _check_lease(session, item, assignment, overlap: int, now: float) -> None:
    """Refuse (409) a late answer whose item went to others in the meantime, up to its overlap.

    Only when the lease has expired; the assignment lock (PostgreSQL) keeps ``Assigner``
    from handing out the place while this answer takes it. Gold items have no overlap.
    """
    if assignment.status != "leased" or assignment.expires_at > now or item.is_gold:
        return
    if session.get_bind().dialect.name == "postgresql":
        session.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": LOCK_ASSIGN})
    taken = session.scalar(HAS_ROOM_SQL, {"item_id": item.id, "now": now})
    if taken >= overlap:
        raise ApiError(
            409,
            f"item {item.id}: your lease expired and the item went to other annotators; "
            "GET /api/next for another",
        )


def _replay(session_factory: sessionmaker, user: User, body: LabelIn, digest: str):
    with session_factory() as session:
        stored = session.execute(
            STORED_BY_KEY, {"user_id": user.id, "key": body.idempotency_key}
        ).first()
    return None if stored is None else _replayed(stored, digest)


def submit_label(
    session_factory: sessionmaker,
    user: User,
    body: LabelIn,
    rubric: Rubric,
    *,
    overlap: int,
    now: float | None = None,
) -> tuple[int, dict]:
    """Store one label (201) or replay the stored one (200). Raises ApiError.

    ``overlap`` is the campaign's labels per item, for answers that come after their lease
    expired. Plain Core statements in one transaction: this is the hot path of the server.
    """
    digest = _request_hash(body)
    now = time.time() if now is None else now
    try:
        with session_factory.begin() as session:
            stored = session.execute(
                STORED_BY_KEY, {"user_id": user.id, "key": body.idempotency_key}
            ).first()
            if stored is not None:
                return _replayed(stored, digest)
            check_id("item", body.item_id)
            item = session.execute(ITEM_FOR_LABEL, {"item_id": body.item_id}).first()
            if item is None:
                raise ApiError(404, f"item {body.item_id} does not exist")
            validate_label(body, item.k, rubric)
            assignment = session.execute(
                ASSIGNMENT_OF, {"item_id": item.id, "user_id": user.id}
            ).first()
            if assignment is None:
                raise ApiError(409, f"item {item.id} is not assigned to you; GET /api/next first")
            if assignment.status in ("skipped", "flagged"):
                raise ApiError(409, f"you {assignment.status} item {item.id}")
            if assignment.status == "labelled":  # undo puts it back to "leased"
                # Maybe a concurrent request with this very key (PostgreSQL): replay then.
                raise _Retry(f"you already labelled item {item.id}; undo that label first")
            _check_lease(session, item, assignment, overlap, now)
            overall = body.overall
            response = {
                "item_id": item.id,
                "annotator": user.name,
                "overall": {"choice": overall.choice, "strength": overall.strength}
                if overall
                else None,
                "criteria": {name: body.criteria[name] for name in rubric.names},
                "ranking": body.ranking,
                "rationale": body.rationale,
                "display_order": list(assignment.display_order),
                "created_at": now,
                "undone": False,
            }
            label_id = session.execute(
                INSERT_LABEL,
                dict(
                    item_id=item.id,
                    user_id=user.id,
                    assignment_id=assignment.id,
                    idempotency_key=body.idempotency_key,
                    request_hash=digest,
                    overall_choice=overall.choice if overall else None,
                    strength=overall.strength if overall else None,
                    criteria=response["criteria"],
                    ranking=body.ranking,
                    display_order=response["display_order"],
                    rationale=body.rationale,
                    is_gold=item.is_gold,
                    created_at=now,
                    undone_at=None,
                    response_json=json.dumps(response, ensure_ascii=False),
                ),
            ).scalar_one()
            session.execute(MARK_LABELLED, {"assignment_id": assignment.id})
        return 201, {"label_id": label_id, **response}
    except (IntegrityError, _Retry) as exc:
        replay = _replay(session_factory, user, body, digest)
        if replay is not None:
            return replay
        message = str(exc) if isinstance(exc, _Retry) and str(exc) else None
        raise ApiError(
            409, message or f"you already labelled item {body.item_id}; undo it first"
        ) from None


class _Retry(Exception):
    """Settle by replaying the stored label if this key has one by now, else a 409."""


def undo_label(
    session_factory: sessionmaker,
    user: User,
    label_id: int,
    lease_seconds: float,
    now: float | None = None,
) -> dict:
    """Take a label back; the item returns to its annotator, first in their queue."""
    now = time.time() if now is None else now
    check_id("label", label_id)
    with session_factory.begin() as session:
        label = session.get(Label, label_id)
        if label is None or (label.user_id != user.id and user.role != "admin"):
            raise ApiError(404, f"label {label_id} does not exist or is not yours")
        if label.undone_at is None:
            label.undone_at = now
            assignment = session.get(Assignment, label.assignment_id)
            assignment.status = "leased"
            assignment.leased_at = now
            assignment.expires_at = now + lease_seconds
        return {"label_id": label.id, "item_id": label.item_id, "undone": True}


def skip_or_flag(
    session_factory: sessionmaker,
    user: User,
    item_id: int,
    kind: Literal["skip", "flag"],
    reason: str,
    now: float | None = None,
) -> dict:
    """Give an item back (skip) or report it (flag); either way it is not served to you again.

    Annotators and reviewers may do so only for items served to them; admins for any item.
    """
    now = time.time() if now is None else now
    status = {"skip": "skipped", "flag": "flagged"}[kind]
    if kind == "flag" and not reason.strip():
        raise ApiError(422, "reason: say why the item is flagged")
    check_id("item", item_id)
    with session_factory.begin() as session:
        item = session.get(Item, item_id)
        if item is None:
            raise ApiError(404, f"item {item_id} does not exist")
        assignment = session.scalars(
            sa.select(Assignment).where(
                Assignment.item_id == item_id, Assignment.user_id == user.id
            )
        ).first()
        if assignment is None and user.role != "admin":
            raise ApiError(409, f"item {item_id} was not given to you; GET /api/next first")
        if assignment is not None and assignment.status == "labelled":
            raise ApiError(409, f"you labelled item {item_id}; undo the label first")
        if assignment is not None and assignment.status == status:
            return {"item_id": item_id, "status": status}
        if assignment is None:
            session.add(
                Assignment(
                    item_id=item_id,
                    user_id=user.id,
                    display_order=list(range(item.k)),
                    status=status,
                    leased_at=now,
                    expires_at=now,
                )
            )
        else:
            assignment.status = status
        flagged_before = (
            kind == "flag"
            and session.scalars(
                sa.select(ItemEvent.id).where(
                    ItemEvent.item_id == item_id,
                    ItemEvent.user_id == user.id,
                    ItemEvent.kind == "flag",
                )
            ).first()
        )
        if not flagged_before:  # flag, skip, flag again: one annotator's flag counts once
            session.add(
                ItemEvent(
                    item_id=item_id, user_id=user.id, kind=kind, reason=reason, created_at=now
                )
            )
    return {"item_id": item_id, "status": status}
