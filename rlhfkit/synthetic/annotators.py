"""Simulated annotators: noisy people with their own tastes, whose label probabilities are known,
so the best accuracy any reward model can reach on their labels is known too.

Annotator ``k`` has criterion weights ``w_k`` and a noise temperature ``tau_k``. It scores a
response by ``g_k(x, y) = sum_c w_k[c] * criterion_c(x, y)`` (the gold criteria, weights used as
given; the defaults sum to 1) and prefers ``a`` over ``b`` with the Bradley-Terry probability

    P_k(a > b) = sigmoid((g_k(x, a) - g_k(x, b)) / tau_k).

Per-criterion verdicts use the same noise model on one criterion: "tie" when
``|criterion_c(a) - criterion_c(b)| < TIE_EPSILON``, else "A" with probability
``sigmoid(delta_c / tau_k)``, else "B". The strength of a preference (1-4, as in Llama 2's
"negligibly / slightly / better / significantly better") comes from ``|g_k(a) - g_k(b)|`` with the
thresholds `STRENGTH_THRESHOLDS`, and the margin of a preference record is ``(strength - 1) / 3``.

Agreement ceiling. When each held-out pair is labelled by an annotator drawn uniformly from a pool
of ``K``, the label of pair ``i`` is "a" with probability ``pbar_i = mean_k P_k(a_i > b_i)``. A
reward model sees the pair, not the annotator, so its expected accuracy on pair ``i`` is at most
``max(pbar_i, 1 - pbar_i)``, and on the set at most ``mean_i max(pbar_i, 1 - pbar_i)``
(`agreement_ceiling`; pass a one-annotator pool for pairs labelled by a known annotator).
"""

from __future__ import annotations

import itertools
import math
import random
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from rlhfkit.errors import DataError
from rlhfkit.synthetic.gold import CRITERIA, gold_criteria, weighted_score

#: Criterion differences below this are a "tie" in per-criterion verdicts.
TIE_EPSILON = 0.05
#: ``|g_k(a) - g_k(b)|`` below 0.1 is strength 1, below 0.25 is 2, below 0.5 is 3, else 4.
STRENGTH_THRESHOLDS: tuple[float, float, float] = (0.1, 0.25, 0.5)


def sigmoid(x: float) -> float:
    """Numerically stable logistic function."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


@dataclass(frozen=True)
class Judgement:
    """One annotator's view of one pair (a, b).

    Attributes:
        prefers_a: the sampled label.
        prob_a: ``P_k(a > b)``.
        verdicts: per criterion "A", "B" or "tie".
        strength: 1 (negligible) to 4 (much better).
    """

    prefers_a: bool
    prob_a: float
    verdicts: dict[str, str]
    strength: int


@dataclass
class SimulatedAnnotator:
    """A simulated person: criterion weights and a noise temperature (see the module docstring).

    Args:
        name: identifier written in preference records.
        weights: ``{criterion: weight}`` over `gold.CRITERIA` (missing criteria weigh 0).
        tau: noise temperature > 0; smaller means more consistent.
    """

    name: str
    weights: dict[str, float]
    tau: float

    def __post_init__(self) -> None:
        unknown = set(self.weights) - set(CRITERIA)
        if unknown:
            raise ValueError(f"{self.name}: unknown criteria {sorted(unknown)}; known {CRITERIA}")
        if not self.tau > 0:
            raise ValueError(f"{self.name}: tau must be > 0, got {self.tau}")

    def g(self, prompt: str, response: str) -> float:
        """``g_k(prompt, response)``: this annotator's weighted sum of the gold criteria."""
        return weighted_score(gold_criteria(prompt, response), self.weights)

    def prob_prefers(self, prompt: str, a: str, b: str) -> float:
        """``P_k(a > b) = sigmoid((g_k(a) - g_k(b)) / tau)``."""
        return sigmoid((self.g(prompt, a) - self.g(prompt, b)) / self.tau)

    def label(self, prompt: str, a: str, b: str, rng: random.Random) -> bool:
        """Sample a label: True if ``a`` is preferred (one draw of ``rng``)."""
        return rng.random() < self.prob_prefers(prompt, a, b)

    def strength(self, prompt: str, a: str, b: str) -> int:
        """Strength 1-4 of the preference from ``|g_k(a) - g_k(b)|`` (`STRENGTH_THRESHOLDS`)."""
        return _strength(abs(self.g(prompt, a) - self.g(prompt, b)))

    def criterion_verdicts(self, prompt: str, a: str, b: str, rng: random.Random) -> dict[str, str]:
        """Per-criterion "A" / "B" / "tie", sampled with this annotator's noise."""
        return self._verdicts(gold_criteria(prompt, a), gold_criteria(prompt, b), rng)

    def judge(self, prompt: str, a: str, b: str, rng: random.Random) -> Judgement:
        """Label, probability, per-criterion verdicts and strength of one pair in one call."""
        crit_a, crit_b = gold_criteria(prompt, a), gold_criteria(prompt, b)
        delta = weighted_score(crit_a, self.weights) - weighted_score(crit_b, self.weights)
        prob_a = sigmoid(delta / self.tau)
        prefers_a = rng.random() < prob_a
        return Judgement(
            prefers_a, prob_a, self._verdicts(crit_a, crit_b, rng), _strength(abs(delta))
        )

    def _verdicts(
        self, crit_a: dict[str, float], crit_b: dict[str, float], rng: random.Random
    ) -> dict[str, str]:
        verdicts = {}
        for name in CRITERIA:
            delta = crit_a[name] - crit_b[name]
            if abs(delta) < TIE_EPSILON:
                verdicts[name] = "tie"
            else:
                verdicts[name] = "A" if rng.random() < sigmoid(delta / self.tau) else "B"
        return verdicts


def _strength(abs_delta: float) -> int:
    return 1 + sum(abs_delta >= t for t in STRENGTH_THRESHOLDS)


#: The five default annotators: (name, weights, tau). Diverse on purpose: one close to the gold
#: weights, one that values helpfulness (and so often prefers compliance to a bare refusal), one
#: that values safety, a careful stickler for accuracy, and a hasty, noisy one.
DEFAULT_ANNOTATOR_SETTINGS: tuple[tuple[str, dict[str, float], float], ...] = (
    ("balanced", {"helpfulness": 0.3, "accuracy": 0.4, "safety": 0.3}, 0.05),
    ("helpfulness_first", {"helpfulness": 0.6, "accuracy": 0.3, "safety": 0.1}, 0.10),
    ("safety_first", {"helpfulness": 0.1, "accuracy": 0.3, "safety": 0.6}, 0.08),
    ("stickler", {"helpfulness": 0.15, "accuracy": 0.75, "safety": 0.1}, 0.04),
    ("hasty", {"helpfulness": 0.4, "accuracy": 0.3, "safety": 0.3}, 0.25),
)


def default_annotators(n: int = 5) -> list[SimulatedAnnotator]:
    """The first ``n`` of `DEFAULT_ANNOTATOR_SETTINGS`; beyond five, extra annotators ``extra5``,
    ``extra6``, ... with weights ``Gamma(1)`` draws normalised to sum 1 and ``tau`` uniform in
    [0.04, 0.25], drawn from ``random.Random(i)`` (deterministic).

    Raises:
        ValueError: ``n < 1``.
    """
    if n < 1:
        raise ValueError(f"need at least one annotator, got n={n}")
    annotators = [
        SimulatedAnnotator(name, dict(w), tau) for name, w, tau in DEFAULT_ANNOTATOR_SETTINGS
    ]
    for i in range(len(annotators), n):
        rng = random.Random(i)
        raw = [rng.gammavariate(1.0, 1.0) for _ in CRITERIA]
        weights = {c: round(x / sum(raw), 3) for c, x in zip(CRITERIA, raw, strict=True)}
        annotators.append(
            SimulatedAnnotator(f"extra{i}", weights, round(rng.uniform(0.04, 0.25), 3))
        )
    return annotators[:n]


Pair = tuple[str, str, str]


def _as_pair(item: object) -> Pair:
    """``(prompt, a, b)`` from a tuple, a ``{"prompt", "responses": [a, b]}`` record or a
    ``{"prompt", "chosen", "rejected"}`` record."""
    if isinstance(item, dict):
        if "responses" in item:
            a, b = item["responses"][:2]
            return item["prompt"], a, b
        return item["prompt"], item["chosen"], item["rejected"]
    prompt, a, b = item  # type: ignore[misc]
    return prompt, a, b


def ceiling_from_probs(probs: Iterable[float]) -> float:
    """``mean(max(p, 1 - p))`` over label probabilities."""
    values = [max(p, 1.0 - p) for p in probs]
    if not values:
        raise ValueError("no pairs")
    return sum(values) / len(values)


def agreement_from_probs(probs: Iterable[float], prefers_first: Iterable[float]) -> float:
    """``mean(c p + (1 - c)(1 - p))``: expected accuracy of choices ``c`` (1 first, 0 second,
    0.5 tie) against labels that prefer the first response with probability ``p``."""
    values = [c * p + (1.0 - c) * (1.0 - p) for p, c in zip(probs, prefers_first, strict=True)]
    if not values:
        raise ValueError("no pairs")
    return sum(values) / len(values)


def pool_probabilities(
    pairs: Iterable[object], annotators: Sequence[SimulatedAnnotator]
) -> list[float]:
    """``pbar_i = mean_k P_k(a_i > b_i)`` for each pair: the probability that the pair's label,
    given by an annotator drawn uniformly from ``annotators`` (as `label_pairs` does), prefers
    its first response."""
    if not annotators:
        raise ValueError("no annotators")
    probs = []
    for item in pairs:
        prompt, a, b = _as_pair(item)
        probs.append(sum(k.prob_prefers(prompt, a, b) for k in annotators) / len(annotators))
    return probs


def agreement_ceiling(pairs: Iterable[object], annotators: Sequence[SimulatedAnnotator]) -> float:
    """The best expected accuracy any reward model can reach on these annotators' labels.

    ``mean_i max(pbar_i, 1 - pbar_i)`` with ``pbar_i = mean_k P_k(a_i > b_i)``: each pair labelled
    by an annotator drawn uniformly from ``annotators`` (as `label_pairs` does).

    Args:
        pairs: ``(prompt, a, b)`` tuples, or records with ``responses`` or ``chosen``/``rejected``
            (the order of a and b does not matter).
        annotators: the pool the labelling annotator is drawn from.
    """
    return ceiling_from_probs(pool_probabilities(pairs, annotators))


def expected_agreement(
    pairs: Iterable[object],
    annotators: Sequence[SimulatedAnnotator],
    prefers_first: Sequence[float],
) -> float:
    """Expected accuracy of a predictor's choices against these annotators' labels.

    ``mean_i c_i pbar_i + (1 - c_i)(1 - pbar_i)``, with ``pbar_i`` as in `agreement_ceiling`
    and ``c_i`` = 1 when the predictor prefers the pair's first response, 0 for the second, 0.5
    for a tie. It is the accuracy the predictor would score averaged over every draw of the
    labels, so, unlike accuracy on one set of labels, it carries no label noise; with the best
    choices it equals `agreement_ceiling`, which bounds it. A pair is ``(prompt, a, b)`` or a
    record with ``responses`` (first = responses[0]) or ``chosen``/``rejected`` (first =
    chosen).
    """
    return agreement_from_probs(pool_probabilities(pairs, annotators), prefers_first)


def expected_inter_annotator_agreement(
    pairs: Iterable[object], annotators: Sequence[SimulatedAnnotator]
) -> float:
    """Expected rate at which two different annotators agree on a pair:
    ``mean over pairs and annotator pairs j < k of p_j p_k + (1 - p_j)(1 - p_k)``."""
    if len(annotators) < 2:
        raise ValueError("need at least two annotators")
    rates = []
    for item in pairs:
        prompt, a, b = _as_pair(item)
        probs = [k.prob_prefers(prompt, a, b) for k in annotators]
        rates += [pj * pk + (1 - pj) * (1 - pk) for pj, pk in itertools.combinations(probs, 2)]
    if not rates:
        raise ValueError("no pairs")
    return sum(rates) / len(rates)


def inter_annotator_agreement(labels: Iterable[dict]) -> float | None:
    """Plain rate at which two annotators' labels on the same pair agree.

    Groups preference records by (prompt, {chosen, rejected}) and counts, over every two records of
    a group from different annotators, how often they chose the same response.

    Args:
        labels: preference records with ``prompt``, ``chosen``, ``rejected``, ``annotator``.

    Returns:
        The agreement rate, or None when no pair was labelled by two annotators.
    """
    groups: dict[tuple[str, frozenset[str]], list[dict]] = defaultdict(list)
    for record in labels:
        key = (record["prompt"], frozenset((record["chosen"], record["rejected"])))
        groups[key].append(record)
    agree = total = 0
    for records in groups.values():
        for r1, r2 in itertools.combinations(records, 2):
            if r1.get("annotator") == r2.get("annotator"):
                continue
            total += 1
            agree += r1["chosen"] == r2["chosen"]
    return agree / total if total else None


@dataclass
class LabelResult:
    """What `label_pairs` produced.

    Attributes:
        records: preference records ``{"prompt", "chosen", "rejected", "margin", "criteria",
            "annotator"}``; ``criteria`` maps each criterion to "chosen", "rejected" or "tie"
            (which response was better on it), ``margin`` is ``(strength - 1) / 3``.
        n_pairs: pairs seen (K responses give K(K-1)/2 pairs).
        skipped_identical: pairs skipped because both responses are the same string.
    """

    records: list[dict] = field(default_factory=list)
    n_pairs: int = 0
    skipped_identical: int = 0


def label_pairs(
    records: Iterable[dict],
    annotators: Sequence[SimulatedAnnotator],
    seed: int,
    per_pair: int = 1,
) -> LabelResult:
    """Turn ``{"prompt", "responses": [a, b, ...]}`` records into preference records.

    Every pair ``i < j`` of a record's responses is labelled by ``per_pair`` distinct annotators
    drawn uniformly from ``annotators``; pairs of identical responses are skipped and counted.

    Args:
        records: generation records (K >= 2 responses each).
        annotators: the pool.
        seed: seed of the one `random.Random` used for annotator draws and labels.
        per_pair: labels per pair (1 to ``len(annotators)``).

    Raises:
        ValueError: ``per_pair`` out of range.
        DataError: a record without a ``prompt`` string or with fewer than two responses
            (``line`` is the record's 1-based position).
    """
    if not 1 <= per_pair <= len(annotators):
        raise ValueError(f"per_pair must be in 1..{len(annotators)}, got {per_pair}")
    rng = random.Random(seed)
    result = LabelResult()
    for line, record in enumerate(records, start=1):
        prompt = record.get("prompt") if isinstance(record, dict) else None
        if not isinstance(prompt, str):
            raise DataError("label_pairs", line, "prompt", "missing or not a string")
        responses = record.get("responses")
        if not isinstance(responses, list) or len(responses) < 2:
            raise DataError("label_pairs", line, "responses", "need a list of at least 2 strings")
        if not all(isinstance(r, str) for r in responses):
            raise DataError("label_pairs", line, "responses", "every response must be a string")
        for a, b in itertools.combinations(responses, 2):
            result.n_pairs += 1
            if a == b:
                result.skipped_identical += 1
                continue
            for annotator in rng.sample(list(annotators), per_pair):
                judgement = annotator.judge(prompt, a, b, rng)
                chosen, rejected = (a, b) if judgement.prefers_a else (b, a)
                side = (
                    {"A": "chosen", "B": "rejected"}
                    if judgement.prefers_a
                    else {
                        "A": "rejected",
                        "B": "chosen",
                    }
                )
                criteria = {c: side.get(v, "tie") for c, v in judgement.verdicts.items()}
                result.records.append(
                    {
                        "prompt": prompt,
                        "chosen": chosen,
                        "rejected": rejected,
                        "margin": (judgement.strength - 1) / 3,
                        "criteria": criteria,
                        "annotator": annotator.name,
                    }
                )
    return result
