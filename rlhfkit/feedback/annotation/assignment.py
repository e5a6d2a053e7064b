"""Which item an annotator labels next.

Rules:
* every regular item gets ``overlap`` labels from distinct annotators; a live lease holds one
  of those places until it is labelled, skipped, flagged or it times out (``lease_seconds``),
  and a timed-out lease returns its place to the queue;
* nobody is given an item twice (one assignment row per item and annotator, enforced by a
  unique constraint); an annotator who asks again gets the lease they already hold, with the
  same sides, and one whose lease timed out gets it back if the item still has room;
* sides are shuffled per annotator and item and recorded in the assignment;
* gold (attention-check) items are served to each annotator, one after every ``gold_every``
  regular labels, regardless of ``overlap``;
* items flagged by ``flag_limit`` annotators leave the queue;
* with a reward model in the loop, the items it is least certain about come first
  (:func:`uncertainty`), otherwise items go in file order, so items are finished one by one.

Picking and leasing run in one serialised transaction (SQLite: ``BEGIN IMMEDIATE``;
PostgreSQL: a transaction-level advisory lock), so two annotators asking at once can never
both take an item's last place.
"""

from __future__ import annotations

import math
import random
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from .db import LOCK_ASSIGN, Assignment, Item, Label

ASSIGNMENTS = Assignment.__table__
ITEMS = Item.__table__


_A = ASSIGNMENTS.c
INSERT_LEASE = sa.insert(ASSIGNMENTS).returning(_A.id)
LEASES_OF = (
    sa.select(_A.id, _A.item_id, _A.display_order, _A.expires_at)
    .where(_A.user_id == sa.bindparam("user_id"), _A.status == "leased")
    .order_by(_A.leased_at.desc(), _A.id.desc())
)


@dataclass(frozen=True)
class Lease:
    """An item leased to one annotator, with the order its responses are shown in."""

    id: int
    item_id: int
    display_order: list[int]
    expires_at: float


@dataclass(frozen=True)
class AssignmentPolicy:
    overlap: int = 1
    lease_seconds: float = 1800.0
    gold_every: int = 10  # 0: never serve gold items
    flag_limit: int = 2


def uncertainty(scores: Sequence[float]) -> float:
    """How unsure a reward model is about an item; smaller = less sure (served first).

    K = 2: |σ(r_A − r_B) − ½| (0 when the model sees no difference, → ½ when it is sure).
    K > 2: the smallest gap between adjacent sorted scores (the closest call in its ranking).
    """
    if len(scores) == 2:
        diff = scores[0] - scores[1]
        return abs(1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, diff)))) - 0.5)
    ordered = sorted(scores)
    return min(b - a for a, b in zip(ordered, ordered[1:], strict=False))


def score_items(
    session_factory: sessionmaker,
    reward_fn: Callable[[list[str], list[str]], list[float]],
    batch_size: int = 64,
) -> int:
    """Score every item that has no reward-model scores yet; returns how many were scored.

    Each response is scored as PPO and `eval` score samples (`score_samples`): an rlhfkit reward
    model gets the prompt as loaded, so a conversation goes through its chat template as `rm`
    trained on it; other rewards get the prompt as text."""
    from rlhfkit.models.reward_fn import score_samples

    from .export import prompt_text  # late: export imports this module's neighbours

    with session_factory() as session:
        pending = session.execute(
            sa.select(Item.id, Item.prompt, Item.responses).where(Item.rm_scores.is_(None))
        ).all()
    scored = 0
    for start in range(0, len(pending), batch_size):
        batch = pending[start : start + batch_size]
        prompts: list = []  # as loaded: text or a conversation
        responses: list[str] = []
        for _item_id, prompt, item_responses in batch:
            prompts += [prompt] * len(item_responses)
            responses += list(item_responses)
        rewards = score_samples(
            reward_fn,
            prompts,
            responses,
            rendered=[prompt_text(p) for p in prompts],
            ended=[True] * len(responses),  # items hold whole responses
        )
        rewards = [float(r) for r in rewards]
        if len(rewards) != len(responses):
            raise ValueError(
                f"reward function returned {len(rewards)} scores for {len(responses)} responses"
            )
        with session_factory.begin() as session:
            offset = 0
            for item_id, _prompt, item_responses in batch:
                item_scores = rewards[offset : offset + len(item_responses)]
                offset += len(item_responses)
                session.execute(
                    sa.update(Item)
                    .where(Item.id == item_id)
                    .values(rm_scores=item_scores, uncertainty=uncertainty(item_scores))
                )
        scored += len(batch)
    return scored


# The hot queries are plain SQL (portable between SQLite and PostgreSQL): building them with
# the ORM on every request cost more than running them.
_OPEN_ITEMS_WHERE = """
FROM items i
WHERE i.is_gold = :false
  AND NOT EXISTS (SELECT 1 FROM assignments s WHERE s.item_id = i.id AND s.user_id = :user_id)
  AND (SELECT COUNT(*) FROM assignments t
       WHERE t.item_id = i.id
         AND (t.status = 'labelled' OR (t.status = 'leased' AND t.expires_at > :now))) < :overlap
  AND (SELECT COUNT(DISTINCT e.user_id) FROM item_events e
       WHERE e.item_id = i.id AND e.kind = 'flag') < :flag_limit
"""
OPEN_ITEM_SQL = sa.text(
    "SELECT i.id, i.k"
    + _OPEN_ITEMS_WHERE
    + "ORDER BY (CASE WHEN i.uncertainty IS NULL THEN 1 ELSE 0 END), i.uncertainty, i.id LIMIT 1"
)
OPEN_COUNT_SQL = sa.text("SELECT COUNT(*)" + _OPEN_ITEMS_WHERE)
PROGRESS_SQL = sa.text(
    "SELECT (SELECT COUNT(*) FROM labels WHERE user_id = :user_id AND undone_at IS NULL), "
    "(SELECT COUNT(*) FROM assignments WHERE user_id = :user_id AND status = 'leased' "
    "AND expires_at > :now), (SELECT COUNT(*)" + _OPEN_ITEMS_WHERE + ")"
)
HAS_ROOM_SQL = sa.text(
    """SELECT COUNT(*) FROM assignments t
       WHERE t.item_id = :item_id
         AND (t.status = 'labelled' OR (t.status = 'leased' AND t.expires_at > :now))"""
)


def _open_params(user_id: int, policy: AssignmentPolicy, now: float) -> dict:
    return {
        "false": False,
        "user_id": user_id,
        "now": now,
        "overlap": policy.overlap,
        "flag_limit": policy.flag_limit,
    }


class Assigner:
    """Leases items to annotators (see the module docstring)."""

    def __init__(
        self, policy: AssignmentPolicy, seed: int | None = None, clock: Callable[[], float] = None
    ):
        import time

        self.policy = policy
        self.clock = clock or time.time
        self._rng = random.Random(seed)
        self._rng_lock = threading.Lock()

    def _shuffle(self, k: int) -> list[int]:
        order = list(range(k))
        with self._rng_lock:
            self._rng.shuffle(order)
        return order

    def _lease(self, session: Session, item_id: int, k: int, user_id: int, now: float) -> Lease:
        order = self._shuffle(k)
        expires_at = now + self.policy.lease_seconds
        lease_id = session.execute(
            INSERT_LEASE,
            dict(
                item_id=item_id,
                user_id=user_id,
                display_order=order,
                status="leased",
                leased_at=now,
                expires_at=expires_at,
            ),
        ).scalar_one()
        return Lease(lease_id, item_id, order, expires_at)

    def next_for(self, session: Session, user_id: int) -> Lease | None:
        """The lease to show this annotator now (creating it), or None when none is left.

        Must run inside a write transaction of ``session``. Plain Core statements: this runs
        on every ``GET /api/next``, and the ORM's unit of work cost more than the SQL.
        """
        now = self.clock()
        if session.get_bind().dialect.name == "postgresql":
            session.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": LOCK_ASSIGN})
        # 1. A live lease they already hold (latest first: after an undo, the undone item);
        # 2. else a lease of theirs that timed out, if its item still has room.
        a = ASSIGNMENTS.c
        leases = session.execute(LEASES_OF, {"user_id": user_id}).all()
        for lease_id, item_id, order, expires_at in leases:
            if expires_at > now:
                return Lease(lease_id, item_id, list(order), expires_at)
        for lease_id, item_id, order, _expires_at in leases:
            is_gold = session.execute(
                sa.select(ITEMS.c.is_gold).where(ITEMS.c.id == item_id)
            ).scalar_one()
            taken = session.scalar(HAS_ROOM_SQL, {"item_id": item_id, "now": now})
            if is_gold or taken < self.policy.overlap:
                expires_at = now + self.policy.lease_seconds
                session.execute(
                    sa.update(ASSIGNMENTS)
                    .where(a.id == lease_id)
                    .values(leased_at=now, expires_at=expires_at)
                )
                return Lease(lease_id, item_id, list(order), expires_at)
        # 3. A gold item, when one is due (also once the regular items are all done: it checks
        # the labels already given).
        if self.policy.gold_every > 0:
            gold = self._due_gold(session, user_id)
            if gold is not None:
                return self._lease(session, gold[0], gold[1], user_id, now)
        # 4. The best open regular item.
        regular = session.execute(OPEN_ITEM_SQL, _open_params(user_id, self.policy, now)).first()
        if regular is None:
            return None
        return self._lease(session, regular[0], regular[1], user_id, now)

    def _due_gold(self, session: Session, user_id: int):
        regular_done = session.scalar(
            sa.select(sa.func.count(Label.id)).where(
                Label.user_id == user_id, Label.is_gold.is_(False), Label.undone_at.is_(None)
            )
        )
        gold_served = session.scalar(
            sa.select(sa.func.count(Assignment.id))
            .join(Item, Item.id == Assignment.item_id)
            .where(Assignment.user_id == user_id, Item.is_gold.is_(True))
        )
        if regular_done < (gold_served + 1) * self.policy.gold_every:
            return None
        seen = sa.select(Assignment.item_id).where(Assignment.user_id == user_id)
        unseen = session.execute(
            sa.select(Item.id, Item.k).where(Item.is_gold.is_(True), Item.id.not_in(seen))
        ).all()
        if not unseen:
            return None
        with self._rng_lock:
            return self._rng.choice(unseen)

    def progress(self, session: Session, user_id: int) -> dict[str, int]:
        """``labelled``: their live labels; ``remaining``: the leases they hold plus the items
        they could still be given (one query: this runs on every ``GET /api/next``)."""
        params = _open_params(user_id, self.policy, self.clock())
        labelled, held, open_items = session.execute(PROGRESS_SQL, params).one()
        return {"labelled": labelled or 0, "remaining": (held or 0) + (open_items or 0)}
