"""Simulated annotators labelling through the real annotation API, in process.

The demo's simulated people (``rlhfkit.synthetic.annotators``) take exactly the path a person
takes: each gets a user and a token, pulls ``GET /api/next`` (so assignment, overlap and side
shuffling apply), and answers with ``POST /api/labels``; the result is ``GET /api/export``.
Only the judging differs: :func:`judgement_to_label` turns one annotator's judgement of the
sides it was shown into the request body.
"""

from __future__ import annotations

import json
import math
import random
import tempfile
from collections.abc import Sequence
from pathlib import Path

from .db import load_items, open_database

SIMULATION_ADMIN = "simulation-admin"


def judgement_to_label(item: dict, judgement, idempotency_key: str) -> dict:
    """The ``POST /api/labels`` body for one pairwise judgement of an item as shown.

    Args:
        item: the ``GET /api/next`` body (``responses`` in display order, slots A and B).
        judgement: an object with ``prefers_a`` (bool), ``strength`` (1-4) and ``verdicts``
            (``{criterion: "A"|"B"|"tie"|"both_bad"}``) about (slot A, slot B), like
            ``rlhfkit.synthetic.annotators.Judgement``.
        idempotency_key: unique per label.
    """
    names = [c["name"] for c in item["criteria"]]
    return {
        "item_id": item["item_id"],
        "idempotency_key": idempotency_key,
        "overall": {"choice": "A" if judgement.prefers_a else "B", "strength": judgement.strength},
        "criteria": {name: judgement.verdicts.get(name, "tie") for name in names},
    }


def ranking_to_label(item: dict, ranking: list[str], verdicts: dict, idempotency_key: str) -> dict:
    """The body for an item with K > 2 responses: ``ranking`` is slot letters, best first."""
    names = [c["name"] for c in item["criteria"]]
    return {
        "item_id": item["item_id"],
        "idempotency_key": idempotency_key,
        "ranking": ranking,
        "criteria": {name: verdicts.get(name, "tie") for name in names},
    }


def _gumbel(rng: random.Random) -> float:
    return -math.log(-math.log(max(rng.random(), 1e-300)))


def _rank_k(annotator, item: dict, rng: random.Random) -> tuple[list[str], dict[str, str]]:
    """Rank K > 2 responses the way the annotator's pairwise model implies.

    Adding Gumbel noise of scale τ to each g_k and sorting gives, for any two responses,
    P(a above b) = σ((g_k(a) − g_k(b)) / τ): the annotator's own Bradley-Terry model.
    Per criterion the best response is picked the same way ("tie" when all are within the
    annotator model's tie threshold).
    """
    from rlhfkit.synthetic.annotators import TIE_EPSILON
    from rlhfkit.synthetic.gold import gold_criteria

    prompt = item["prompt"]
    slots = [r["slot"] for r in item["responses"]]
    texts = [r["text"] for r in item["responses"]]
    noisy = [annotator.g(prompt, t) + annotator.tau * _gumbel(rng) for t in texts]
    ranking = [slots[i] for i in sorted(range(len(slots)), key=lambda i: -noisy[i])]
    criteria = [gold_criteria(prompt, t) for t in texts]
    verdicts = {}
    for name in criteria[0]:
        values = [c[name] for c in criteria]
        if max(values) - min(values) < TIE_EPSILON:
            verdicts[name] = "tie"
            continue
        noisy_values = [v + annotator.tau * _gumbel(rng) for v in values]
        verdicts[name] = slots[max(range(len(slots)), key=lambda i: noisy_values[i])]
    return ranking, verdicts


def label_with_simulated_annotators(
    records: Sequence[dict],
    annotators: Sequence,
    *,
    overlap: int = 1,
    seed: int = 0,
    db_url: str | None = None,
    aggregate: str = "none",
) -> list[dict]:
    """Have simulated annotators label ``records`` through the annotation API; return the export.

    Args:
        records: ``{"prompt": str, "responses": [str, ...]}`` (``generate`` output).
        annotators: objects with ``name``, ``judge(prompt, a, b, rng)`` (a Judgement, see
            :func:`judgement_to_label`) and, for K > 2, ``g(prompt, response)`` and ``tau``;
            ``rlhfkit.synthetic.annotators.default_annotators()`` fits.
        overlap: labels per item, from distinct annotators (at most ``len(annotators)``).
        seed: seeds the side shuffling and the annotators' draws (same seed, same labels).
        db_url: the campaign's database; a temporary SQLite file when None.
        aggregate: ``none`` (one record per label), ``majority`` or ``soft`` (see export).

    Returns:
        The records of ``GET /api/export``: preference records for pairs, ranking records for
        K > 2 (ties make no record; see ``export``).
    """
    from fastapi.testclient import TestClient

    from .app import create_app
    from .db import issue_token

    if not annotators:
        raise ValueError("no annotators")
    if not 1 <= overlap <= len(annotators):
        raise ValueError(f"overlap must be in 1..{len(annotators)}, got {overlap}")
    names = [a.name for a in annotators]
    if len(set(names)) != len(names) or SIMULATION_ADMIN in names:
        raise ValueError("annotator names must be distinct (and not 'simulation-admin')")
    with tempfile.TemporaryDirectory(prefix="rlhfkit-sim-") as tmp:
        url = db_url or f"sqlite:///{Path(tmp) / 'labels.db'}"
        durable = db_url is not None  # a temporary database need not survive a power cut
        _engine, session_factory = open_database(url, durable)
        items = [
            {"prompt": r["prompt"], "responses": list(r["responses"])}
            for r in records
            if len(set(r["responses"])) == len(r["responses"])
        ]
        load_items(session_factory, items)
        tokens = {a.name: issue_token(session_factory, a.name, "annotator") for a in annotators}
        admin = issue_token(session_factory, SIMULATION_ADMIN, "admin")
        _engine.dispose()
        app = create_app(
            url, overlap=overlap, seed=seed, rate_limit=0, gold_every=0, durable=durable
        )
        rng = random.Random(seed)
        with TestClient(app) as client:
            active = list(annotators)
            serial = 0
            while active:
                still_active = []
                for annotator in active:  # round robin, as people working side by side
                    headers = {"Authorization": f"Bearer {tokens[annotator.name]}"}
                    response = client.get("/api/next", headers=headers)
                    if response.status_code == 204:
                        continue
                    response.raise_for_status()
                    item = response.json()
                    serial += 1
                    key = f"sim-{seed}-{annotator.name}-{serial}"
                    if item["k"] == 2:
                        a, b = (r["text"] for r in item["responses"])
                        judgement = annotator.judge(item["prompt"], a, b, rng)
                        body = judgement_to_label(item, judgement, key)
                    else:
                        ranking, verdicts = _rank_k(annotator, item, rng)
                        body = ranking_to_label(item, ranking, verdicts, key)
                    posted = client.post("/api/labels", json=body, headers=headers)
                    if posted.status_code != 201:
                        raise RuntimeError(
                            f"simulated label refused ({posted.status_code}): {posted.text}"
                        )
                    still_active.append(annotator)
                active = still_active
            exported = client.get(
                "/api/export",
                params={"aggregate": aggregate},
                headers={"Authorization": f"Bearer {admin}"},
            )
            exported.raise_for_status()
        app.state.engine.dispose()
        return [json.loads(line) for line in exported.text.splitlines() if line.strip()]
