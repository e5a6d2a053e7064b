"""Campaign statistics: counts, agreement per criterion, per-annotator reliability, position
bias, the accuracy ceiling for a reward model, and the in-the-loop reward model's accuracy.

All computed from the live labels in the database on every call, so they follow the labels
as they arrive. Verdicts are compared in canonical form (indices into the item's original
responses, ``"tie"``, ``"both_bad"``), never as slot letters, since sides are shuffled.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter, defaultdict

import sqlalchemy as sa
from sqlalchemy.orm import sessionmaker

from .agreement import (
    binomial_two_sided_p,
    cohen_kappa,
    fleiss_kappa,
    held_out_agreement,
    krippendorff_alpha,
    majority,
)
from .db import Item, ItemEvent, Label, User
from .export import LabelRow, fetch_labels, gold_accuracy, preference_votes


def _clean(value: float | None) -> float | None:
    """JSON has no NaN: an undefined statistic is reported as null."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return round(value, 6)


def _units(rows: list[LabelRow], verdict) -> dict[int, dict[str, object]]:
    """item id → {annotator: canonical verdict}."""
    units: dict[int, dict[str, object]] = defaultdict(dict)
    for row in rows:
        value = verdict(row)
        if value is not None:
            units[row.item_id][row.annotator] = value
    return units


def preference_ceiling(units: list[list[object]]) -> tuple[float, int]:
    """The reward-model ceiling: on pairwise items, how often a held-out annotator's
    preference (response 0 or 1) matches what the others' labels export to with
    ``aggregate=majority`` (`preference_votes`; an even split exports nothing). A reward model
    is trained on such labels and scored against a held-out human. Returns (rate, number of
    cases); NaN when there is no case.

    Example: units [0, 0, 1] and [0, 1, "both_bad"]: unit 1: each 0 vs (0, 1) even → skipped,
    1 vs (0, 0) → 0, wrong; unit 2: 0 vs (1, both_bad) → 1, wrong; 1 vs (0, both_bad) → 0,
    wrong; both_bad is no preference → skipped. 0 of 3 cases.
    """
    agree = total = 0
    for verdicts in units:
        for i, held in enumerate(verdicts):
            if held not in (0, 1):
                continue
            votes = preference_votes(verdicts[:i] + verdicts[i + 1 :])
            if votes[0] == votes[1]:  # no record would be exported
                continue
            total += 1
            agree += held == int(votes[1] > votes[0])
    return (agree / total if total else math.nan), total


def _mean_pairwise_cohen(units: dict[int, dict[str, object]], min_shared: int = 2):
    by_annotator: dict[str, dict[int, object]] = defaultdict(dict)
    for item_id, votes in units.items():
        for name, value in votes.items():
            by_annotator[name][item_id] = value
    weighted = weight = 0.0
    pairs = 0
    for a, b in itertools.combinations(sorted(by_annotator), 2):
        shared = sorted(set(by_annotator[a]) & set(by_annotator[b]))
        if len(shared) < min_shared:
            continue
        kappa = cohen_kappa(
            [by_annotator[a][i] for i in shared], [by_annotator[b][i] for i in shared]
        )
        if math.isnan(kappa):
            continue
        weighted += kappa * len(shared)
        weight += len(shared)
        pairs += 1
    return (weighted / weight if weight else float("nan")), pairs


def agreement_block(units: dict[int, dict[str, object]]) -> dict:
    ratings = [list(v.values()) for v in units.values()]
    cohen, pairs = _mean_pairwise_cohen(units)
    return {
        "items_with_2_or_more_labels": sum(len(r) >= 2 for r in ratings),
        "cohen_kappa_mean_pairwise": _clean(cohen),
        "cohen_kappa_pairs": pairs,
        "fleiss_kappa": _clean(fleiss_kappa(ratings)),
        "krippendorff_alpha": _clean(krippendorff_alpha(ratings)),
    }


def _agreement_with_rest(units: dict[int, dict[str, object]]) -> dict[str, tuple[float, int]]:
    """Per annotator: how often their verdict equals the majority of the other annotators."""
    hits: dict[str, list[bool]] = defaultdict(list)
    for votes in units.values():
        for name, value in votes.items():
            rest = [v for other, v in votes.items() if other != name]
            consensus = majority(rest)
            if consensus is not None:
                hits[name].append(value == consensus)
    return {name: (sum(h) / len(h), len(h)) for name, h in hits.items()}


def _rm_correct(scores: list[float], row: LabelRow) -> list[bool]:
    """Pairwise verdicts of the reward model against one label (K = 2: one pair, or none)."""
    if row.k > 2:
        ranking = row.canonical_ranking()
        return [
            scores[better] > scores[worse] for better, worse in itertools.combinations(ranking, 2)
        ]
    winner = row.overall()
    if winner in ("tie", "both_bad"):
        return []
    return [scores[winner] > scores[1 - winner]]


def reward_model_block(rows: list[LabelRow], scores: dict[int, list[float]]) -> dict | None:
    if not scores:
        return None
    per_label: list[bool] = []
    for row in rows:
        if row.item_id in scores:
            per_label += _rm_correct(scores[row.item_id], row)
    units = _units(rows, lambda r: r.overall())
    vs_majority: list[bool] = []
    for item_id, votes in units.items():
        consensus = majority(list(votes.values()))
        if item_id in scores and consensus in (0, 1) and len(scores[item_id]) == 2:
            item_scores = scores[item_id]
            vs_majority.append(item_scores[consensus] > item_scores[1 - consensus])
    return {
        "items_scored": len(scores),
        "accuracy_vs_labels": _clean(sum(per_label) / len(per_label) if per_label else None),
        "comparisons": len(per_label),
        "accuracy_vs_majority": _clean(
            sum(vs_majority) / len(vs_majority) if vs_majority else None
        ),
        "majority_items": len(vs_majority),
    }


def compute_stats(
    session_factory: sessionmaker, criteria: list[str] | None = None, overlap: int | None = None
) -> dict:
    """Everything ``GET /api/stats`` and ``rlhfkit annotate stats`` report."""
    rows = fetch_labels(session_factory, include_gold=True)
    regular = [r for r in rows if not r.is_gold]
    with session_factory() as session:
        n_items = session.scalar(sa.select(sa.func.count(Item.id))) or 0
        n_gold_items = session.scalar(
            sa.select(sa.func.count(Item.id)).where(Item.is_gold.is_(True))
        )
        n_undone = session.scalar(
            sa.select(sa.func.count(Label.id)).where(Label.undone_at.is_not(None))
        )
        events = session.execute(
            sa.select(ItemEvent.item_id, ItemEvent.kind, ItemEvent.reason, User.name).join(
                User, User.id == ItemEvent.user_id
            )
        ).all()
        scores = {
            item_id: list(s)
            for item_id, s in session.execute(
                sa.select(Item.id, Item.rm_scores).where(Item.rm_scores.is_not(None))
            )
        }
        users = {name: role for name, role in session.execute(sa.select(User.name, User.role))}
    if criteria is None:
        criteria = sorted({name for r in rows for name in r.criteria})

    labels_per_item = Counter(r.item_id for r in regular)
    overlap_target = overlap or (max(labels_per_item.values()) if labels_per_item else 1)
    skips = Counter(name for _i, kind, _r, name in events if kind == "skip")
    flags = Counter(name for _i, kind, _r, name in events if kind == "flag")
    flagged_items: dict[int, list[str]] = defaultdict(list)
    for item_id, kind, reason, _name in events:
        if kind == "flag":
            flagged_items[item_id].append(reason)

    overall_units = _units(regular, lambda r: r.overall())
    agreement = {"overall": agreement_block(overall_units)}
    for name in criteria:
        agreement[name] = agreement_block(_units(regular, lambda r, n=name: r.criterion(n)))

    with_rest = _agreement_with_rest(overall_units)
    gold = gold_accuracy(rows)
    per_annotator_labels = Counter(r.annotator for r in rows)
    pair_choices = [r for r in regular if r.k == 2 and r.overall_choice in ("A", "B")]
    by_annotator_a: dict[str, list[bool]] = defaultdict(list)
    for r in pair_choices:
        by_annotator_a[r.annotator].append(r.overall_choice == "A")

    annotators = {}
    for name in sorted(set(users) | set(per_annotator_labels)):
        rest = with_rest.get(name)
        gold_acc = gold.get(name)
        choices_a = by_annotator_a.get(name, [])
        annotators[name] = {
            "role": users.get(name),
            "labels": per_annotator_labels.get(name, 0),
            "skips": skips.get(name, 0),
            "flags": flags.get(name, 0),
            "agreement_with_rest": _clean(rest[0]) if rest else None,
            "agreement_with_rest_n": rest[1] if rest else 0,
            "gold_accuracy": _clean(gold_acc[0]) if gold_acc else None,
            "gold_n": gold_acc[1] if gold_acc else 0,
            "chose_slot_a": _clean(sum(choices_a) / len(choices_a)) if choices_a else None,
        }

    n_a = sum(r.overall_choice == "A" for r in pair_choices)
    pairwise = {r.item_id for r in regular if r.k == 2}
    ceiling, ceiling_n = preference_ceiling(
        [list(v.values()) for item_id, v in overall_units.items() if item_id in pairwise]
    )
    any_verdict, any_n = held_out_agreement([list(v.values()) for v in overall_units.values()])
    return {
        "counts": {
            "items": n_items,
            "gold_items": n_gold_items,
            "items_labelled": len(labels_per_item),
            "items_complete": sum(c >= overlap_target for c in labels_per_item.values()),
            "overlap": overlap_target,
            "labels": len(rows),
            "gold_labels": len(rows) - len(regular),
            "undone_labels": n_undone,
            "skips": sum(skips.values()),
            "flags": sum(flags.values()),
            "overall_verdicts": dict(
                Counter(str(r.overall()) for r in regular if r.k == 2).most_common()
            ),
        },
        "agreement": agreement,
        "annotators": annotators,
        "position_bias": {
            "pair_choices": len(pair_choices),
            "chose_slot_a": _clean(n_a / len(pair_choices)) if pair_choices else None,
            "p_value_two_sided": _clean(binomial_two_sided_p(n_a, len(pair_choices))),
        },
        "reward_model_ceiling": {
            "held_out_agreement_with_majority": _clean(ceiling),
            "cases": ceiling_n,
            "note": "a held-out annotator's A/B verdict vs the majority of the others "
            "(ties and both-bad left out): the accuracy a reward model can hope for",
        },
        "held_out_agreement_all_verdicts": {"rate": _clean(any_verdict), "cases": any_n},
        "reward_model": reward_model_block(regular, scores),
        "flagged_items": [
            {"item_id": item_id, "flags": len(reasons), "reasons": reasons[:5]}
            for item_id, reasons in sorted(flagged_items.items())[:100]
        ],
    }


def format_stats(stats: dict) -> str:
    """A plain-text report of :func:`compute_stats` for the terminal."""
    c = stats["counts"]
    lines = [
        f"items {c['items']} ({c['gold_items']} gold), labelled {c['items_labelled']}, "
        f"complete {c['items_complete']} (overlap {c['overlap']})",
        f"labels {c['labels']} ({c['gold_labels']} gold, {c['undone_labels']} undone), "
        f"skips {c['skips']}, flags {c['flags']}",
        f"overall verdicts (canonical): {c['overall_verdicts']}",
        "",
        f"{'criterion':<16}{'items≥2':>8}{'Cohen κ':>10}{'Fleiss κ':>10}{'Kripp. α':>10}",
    ]

    def fmt(v):
        return "—" if v is None else f"{v:.3f}"

    for name, block in stats["agreement"].items():
        lines.append(
            f"{name:<16}{block['items_with_2_or_more_labels']:>8}"
            f"{fmt(block['cohen_kappa_mean_pairwise']):>10}{fmt(block['fleiss_kappa']):>10}"
            f"{fmt(block['krippendorff_alpha']):>10}"
        )
    lines += [
        "",
        f"{'annotator':<20}{'role':<11}{'labels':>7}{'skips':>6}{'flags':>6}"
        f"{'agree/rest':>11}{'gold acc':>9}{'chose A':>8}",
    ]
    for name, a in stats["annotators"].items():
        lines.append(
            f"{name[:19]:<20}{(a['role'] or '?'):<11}{a['labels']:>7}{a['skips']:>6}"
            f"{a['flags']:>6}{fmt(a['agreement_with_rest']):>11}{fmt(a['gold_accuracy']):>9}"
            f"{fmt(a['chose_slot_a']):>8}"
        )
    bias = stats["position_bias"]
    ceiling = stats["reward_model_ceiling"]
    lines += [
        "",
        f"position bias: slot A chosen {fmt(bias['chose_slot_a'])} of {bias['pair_choices']} "
        f"A/B choices (two-sided binomial p = {fmt(bias['p_value_two_sided'])})",
        f"reward-model ceiling: held-out annotator vs majority "
        f"{fmt(ceiling['held_out_agreement_with_majority'])} over {ceiling['cases']} cases",
    ]
    rm = stats["reward_model"]
    if rm:
        lines.append(
            f"reward model in the loop: {fmt(rm['accuracy_vs_labels'])} vs labels "
            f"({rm['comparisons']} comparisons), {fmt(rm['accuracy_vs_majority'])} vs "
            f"majority ({rm['majority_items']} items)"
        )
    if stats["flagged_items"]:
        lines.append(f"flagged items: {[f['item_id'] for f in stats['flagged_items']]}")
    return "\n".join(lines)
