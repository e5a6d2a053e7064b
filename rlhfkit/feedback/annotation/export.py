"""Labels → training data for ``rlhfkit rm`` and ``rlhfkit dpo``.

Pairs (K = 2) become preference records::

    {"prompt", "chosen", "rejected", "margin": float, "criteria": {name: verdict},
     "annotator": str, "side": "A"|"B", "strength": 1-4, "item_id", "label_id"}

* ``margin`` comes from the overall strength, with Llama 2's "small" margins: negligibly
  better 0, slightly better 1/3, better 2/3, much better 1 (see ``criteria.STRENGTHS``);
* ``criteria`` verdicts are relative to this record: ``"chosen"`` (the chosen response is
  better on that criterion), ``"rejected"`` (the rejected one is: a response can win overall
  and still lose on, say, helpfulness), ``"tie"`` or ``"both_bad"``;
* ``side`` is where the chosen response was shown to that annotator.
* after a conversation prompt, ``chosen`` and ``rejected`` are assistant messages
  (``[{"role": "assistant", "content": ...}]``), as TRL's conversational format has them.

Ties and both-bad overall verdicts say nothing about which response is better, so they make
no preference record; they are counted in the summary (``ties``, ``both_bad``), never
dropped silently.

Items with K > 2 responses become ranking records
``{"prompt", "responses": [...], "ranking": [best ... worst], "criteria": {name: index|"tie"|
"both_bad"}, ...}`` where ranking holds indices into ``responses`` (the original order) and a
criterion's verdict is the index of the best response on it. After a conversation prompt each
response is an assistant message, as in pairs (`as_reply`), so `rlhfkit rm` trains every ranked
response up to the chat template's end of turn.

``aggregate``:
* ``none`` (default): one record per label;
* ``majority``: one record per item. Each A/B label is a vote, a tie half a vote for each side,
  both-bad no vote; the side with more votes is chosen (an even split is dropped and counted as
  ``no_majority``); ``margin`` is the mean margin of the winning side's votes; each criterion
  takes its most frequent verdict (no majority: ``"tie"``). K > 2: Borda count; where two
  responses tie on points, the item gives the preference records of the pairs its points do
  order instead (no ``margin`` or ``criteria``), counted as ``tied_rankings`` and
  ``pairs_from_tied_rankings`` (all tied: none).
* ``soft``: one record per item with ``"soft_label"`` = the share of votes for ``chosen``
  (½ ≤ soft_label ≤ 1; an even split is kept, with soft_label ½); for a soft Bradley-Terry
  loss −[p log σ(Δ) + (1 − p) log σ(−Δ)]. K > 2: as ``majority``.

Gold (attention-check) items are left out unless asked for; ``min_gold_accuracy`` leaves out
every label of annotators whose accuracy on gold items is below it.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.orm import sessionmaker

from rlhfkit.data.formats import as_reply

from .criteria import STRENGTHS
from .db import Item, Label, User
from .labels import SPECIAL_VERDICTS, canonical

AGGREGATES = ("none", "majority", "soft")


def prompt_text(prompt: object) -> str:
    """A prompt as one string (a chat prompt's messages joined as ``role: content``)."""
    if isinstance(prompt, str):
        return prompt
    return "\n\n".join(f"{m['role']}: {m['content']}" for m in prompt)


@dataclass
class LabelRow:
    label_id: int
    item_id: int
    annotator: str
    prompt: object
    responses: list[str]
    gold: dict | None
    display_order: list[int]
    overall_choice: str | None
    strength: int | None
    criteria: dict[str, str]
    ranking: list[str] | None
    rationale: str
    is_gold: bool
    created_at: float

    @property
    def k(self) -> int:
        return len(self.responses)

    def overall(self) -> int | str:
        """Canonical overall verdict: best index (K > 2: top of the ranking), tie or both_bad."""
        if self.ranking is not None:
            return canonical(self.ranking[0], self.display_order)
        return canonical(self.overall_choice, self.display_order)

    def criterion(self, name: str) -> int | str | None:
        verdict = self.criteria.get(name)
        return None if verdict is None else canonical(verdict, self.display_order)

    def canonical_ranking(self) -> list[int]:
        return [canonical(slot, self.display_order) for slot in self.ranking or []]

    def gold_correct(self) -> bool | None:
        if not self.gold:
            return None
        if "overall" in self.gold:
            return self.overall() == self.gold["overall"]
        return self.overall() == self.gold["ranking"][0]


def fetch_labels(session_factory: sessionmaker, include_gold: bool = True) -> list[LabelRow]:
    """Every live (not undone) label, oldest first."""
    query = (
        sa.select(Label, Item, User.name)
        .join(Item, Item.id == Label.item_id)
        .join(User, User.id == Label.user_id)
        .where(Label.undone_at.is_(None))
        .order_by(Label.id)
    )
    if not include_gold:
        query = query.where(Label.is_gold.is_(False))
    with session_factory() as session:
        rows = session.execute(query).all()
    return [
        LabelRow(
            label_id=label.id,
            item_id=item.id,
            annotator=name,
            prompt=item.prompt,
            responses=list(item.responses),
            gold=item.gold,
            display_order=list(label.display_order),
            overall_choice=label.overall_choice,
            strength=label.strength,
            criteria=dict(label.criteria),
            ranking=label.ranking,
            rationale=label.rationale,
            is_gold=label.is_gold,
            created_at=label.created_at,
        )
        for label, item, name in rows
    ]


def gold_accuracy(rows: Iterable[LabelRow]) -> dict[str, tuple[float, int]]:
    """Per annotator: (share of gold items answered as the known answer, number answered)."""
    hits: dict[str, list[bool]] = defaultdict(list)
    for row in rows:
        correct = row.gold_correct()
        if correct is not None:
            hits[row.annotator].append(correct)
    return {name: (sum(v) / len(v), len(v)) for name, v in hits.items()}


def _relative(verdict: int | str | None, winner: int) -> str | None:
    if verdict is None or verdict in SPECIAL_VERDICTS:
        return verdict
    return "chosen" if verdict == winner else "rejected"


def _label_record(row: LabelRow, summary: Counter) -> dict | None:
    base = {"annotator": row.annotator, "item_id": row.item_id, "label_id": row.label_id}
    if row.rationale:
        base["rationale"] = row.rationale
    if row.k > 2:
        summary["rankings"] += 1
        return {
            "prompt": row.prompt,
            "responses": [as_reply(row.prompt, text) for text in row.responses],
            "ranking": row.canonical_ranking(),
            "criteria": {name: row.criterion(name) for name in row.criteria},
            "display_order": row.display_order,
            **base,
        }
    winner = row.overall()
    if winner in SPECIAL_VERDICTS:
        summary["ties" if winner == "tie" else "both_bad"] += 1
        return None
    summary["pairs"] += 1
    return {
        "prompt": row.prompt,
        "chosen": as_reply(row.prompt, row.responses[winner]),
        "rejected": as_reply(row.prompt, row.responses[1 - winner]),
        "margin": STRENGTHS[row.strength][1],
        "criteria": {name: _relative(row.criterion(name), winner) for name in row.criteria},
        "side": "AB"[row.display_order.index(winner)],
        "strength": row.strength,
        **base,
    }


def borda_points(rows: list[LabelRow]) -> list[int]:
    """Borda points of each response (original order): K-1 for a ranking's first, 0 for its
    last, summed over the item's rankings."""
    k = rows[0].k
    points = [0] * k
    for row in rows:
        for position, index in enumerate(row.canonical_ranking()):
            points[index] += k - 1 - position
    return points


def _most_common(values: list, default: str = "tie"):
    ranked = Counter(v for v in values if v is not None).most_common()
    if not ranked or (len(ranked) > 1 and ranked[0][1] == ranked[1][1]):
        return default
    return ranked[0][0]


def preference_votes(verdicts: list[int | str]) -> list[float]:
    """Votes [for response 0, for response 1] of pairwise verdicts, as ``majority`` and ``soft``
    count them: each A/B verdict one vote, a tie half a vote for each side, both-bad none."""
    votes = [0.0, 0.0]
    for verdict in verdicts:
        if verdict == "tie":
            votes[0] += 0.5
            votes[1] += 0.5
        elif verdict in (0, 1):
            votes[verdict] += 1.0
    return votes


def _aggregate_ranking(rows: list[LabelRow], summary: Counter) -> list[dict]:
    """An item's rankings → one ranking by Borda points; where points tie, the pairs they do
    order (an order between tied responses would be made up, as an even split of a pair is)."""
    first = rows[0]
    points = borda_points(rows)
    about = {
        "n_labels": len(rows),
        "annotators": sorted({r.annotator for r in rows}),
        "item_id": first.item_id,
    }
    if len(set(points)) == first.k:
        summary["rankings"] += 1
        names = list(first.criteria)
        return [
            {
                "prompt": first.prompt,
                "responses": [as_reply(first.prompt, text) for text in first.responses],
                "ranking": sorted(range(first.k), key=lambda i: -points[i]),
                "criteria": {n: _most_common([r.criterion(n) for r in rows]) for n in names},
                **about,
            }
        ]
    summary["tied_rankings"] += 1
    ordered = [(i, j) for i in range(first.k) for j in range(first.k) if points[i] > points[j]]
    summary["pairs_from_tied_rankings"] += len(ordered)
    return [
        {
            "prompt": first.prompt,
            "chosen": as_reply(first.prompt, first.responses[i]),
            "rejected": as_reply(first.prompt, first.responses[j]),
            **about,
        }
        for i, j in ordered
    ]


def _aggregate_item(rows: list[LabelRow], method: str, summary: Counter) -> list[dict]:
    first = rows[0]
    if first.k > 2:
        return _aggregate_ranking(rows, summary)
    names = list(first.criteria)
    annotators = sorted({r.annotator for r in rows})
    votes = preference_votes([row.overall() for row in rows])
    total = votes[0] + votes[1]
    if total == 0:
        summary["both_bad"] += 1
        return []
    if votes[0] == votes[1] and method == "majority":
        summary["no_majority"] += 1
        return []
    winner = 0 if votes[0] >= votes[1] else 1
    margins = [STRENGTHS[r.strength][1] for r in rows if r.overall() == winner]
    record = {
        "prompt": first.prompt,
        "chosen": as_reply(first.prompt, first.responses[winner]),
        "rejected": as_reply(first.prompt, first.responses[1 - winner]),
        "margin": sum(margins) / len(margins) if margins else 0.0,
        "criteria": {
            n: _relative(_most_common([r.criterion(n) for r in rows]), winner) for n in names
        },
        "n_labels": len(rows),
        "annotators": annotators,
        "item_id": first.item_id,
    }
    if method == "soft":
        record["soft_label"] = votes[winner] / total
    summary["pairs"] += 1
    return [record]


def build_records(
    rows: list[LabelRow],
    aggregate: str = "none",
    include_gold: bool = False,
    min_gold_accuracy: float | None = None,
) -> tuple[list[dict], dict[str, int]]:
    """Records in the preference / ranking formats (module docstring) and a summary of counts."""
    if aggregate not in AGGREGATES:
        raise ValueError(f"aggregate: expected one of {AGGREGATES}, got {aggregate!r}")
    summary: Counter = Counter()
    if min_gold_accuracy is not None:
        failed = {
            name for name, (acc, _n) in gold_accuracy(rows).items() if acc < min_gold_accuracy
        }
        kept = [r for r in rows if r.annotator not in failed]
        summary["labels_of_annotators_below_gold_accuracy"] = len(rows) - len(kept)
        rows = kept
    if not include_gold:
        summary["gold_labels_left_out"] = sum(r.is_gold for r in rows)
        rows = [r for r in rows if not r.is_gold]
    summary["labels"] = len(rows)
    records: list[dict] = []
    if aggregate == "none":
        for row in rows:
            record = _label_record(row, summary)
            if record is not None:
                records.append(record)
    else:
        by_item: dict[int, list[LabelRow]] = defaultdict(list)
        for row in rows:
            by_item[row.item_id].append(row)
        for item_rows in by_item.values():
            records += _aggregate_item(item_rows, aggregate, summary)
    summary["records"] = len(records)
    return records, dict(summary)


def export_records(
    session_factory: sessionmaker,
    aggregate: str = "none",
    include_gold: bool = False,
    min_gold_accuracy: float | None = None,
) -> tuple[list[dict], dict[str, int]]:
    """Read the live labels from the database and build the records (see build_records)."""
    rows = fetch_labels(session_factory, include_gold=True)
    return build_records(rows, aggregate, include_gold, min_gold_accuracy)


def to_jsonl(records: Iterable[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def write_jsonl(records: Iterable[dict], path: str | Path) -> None:
    """Write atomically: a half-written export never replaces a good one."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(to_jsonl(records), encoding="utf-8")
    tmp.replace(path)
