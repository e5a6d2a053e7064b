"""`rlhfkit label judge=MODEL_DIR|URL|simulated train_data=PAIRS constitution=FILE output=FILE`:
AI preference labels (RL-CAI / RLAIF) for generated pairs.

Each pair of responses to a prompt (`generate`'s ``{"prompt", "responses": [...]}`` records, every
two responses of a record, or ``{"prompt", "chosen", "rejected"}`` records) is shown to the judge
as a multiple-choice question under a comparison principle drawn at random, in both orders; the
soft label is the position-debiased P(a beats b) (see `rlhfkit.feedback.ai_labeller`).

Output: ``output`` holds one preference record per pair ``{"prompt", "chosen", "rejected",
"soft_label", "principle", "judge"}`` (``soft_label`` = P(chosen beats rejected) in [0.5, 1]),
directly usable by `rlhfkit rm` and `rlhfkit dpo`; ``judgments_output`` (default
``OUTPUT.judgments.jsonl``) holds every raw judgment, written as it is made, so a run stopped by an
endpoint that is down keeps what it did and a rerun of the same command continues from there;
``OUTPUT.summary.json`` holds the counts (and, on the embedded world, the agreement of the labels
with the gold reward).
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhfkit.config import option
from rlhfkit.data.io import read_records, write_json, write_jsonl
from rlhfkit.errors import ConfigError, DataError
from rlhfkit.feedback.ai_labeller import (
    LMJudge,
    Pair,
    SimulatedJudge,
    draw_principle,
    load_text_model,
    preference_record,
)
from rlhfkit.feedback.constitution import load_constitution
from rlhfkit.feedback.openai_client import EndpointError
from rlhfkit.rollout.sampling import SamplingParams
from rlhfkit.training.run import console


@dataclass
class LabelConfig:
    """AI preference labels: a judge model (local directory, OpenAI-compatible URL, or
    `simulated`) picks the better response of each pair by a randomly drawn principle."""

    judge: str = option(
        "",
        "the judge: a model directory, an http(s) URL of an OpenAI-compatible "
        "API (rlhfkit serve, vLLM, hosted), or `simulated` (the world's annotators)",
    )
    train_data: str = option(
        "",
        "pairs: {prompt, responses: [...]} (generate's output; every two "
        "responses form a pair) or {prompt, chosen, rejected} records",
    )
    constitution: str = option("default", "constitution: default, world, or a YAML file")
    prompt_format: str = option("", "YAML file of prompt templates overriding the constitution's")
    output: str = option("", "output JSONL of preference records with soft_label")
    judgments_output: str = option("", "raw judgments JSONL; empty = OUTPUT.judgments.jsonl")
    chain_of_thought: bool = option(False, "the judge reasons first; labels clamped to `clamp`")
    clamp: list[float] = option([0.4, 0.6], "[low, high] range of chain-of-thought soft labels")
    both_orders: bool = option(True, "judge each pair in both orders to cancel position bias")
    seed: int = option(0, "seed of principle draws and sampling")
    dtype: str = option("auto", "local judge weight dtype: auto, float32, bfloat16")
    batch_size: int = option(32, "pairs judged per step (and rows per forward pass)")
    max_prompt_length: int = option(1024, "longer judge prompts lose their start (local judge)")
    max_new_tokens: int = option(128, "tokens of chain-of-thought reasoning")
    temperature: float = option(0.0, "sampling temperature of the reasoning; 0 = greedy")
    top_p: float = option(1.0, "nucleus sampling of the reasoning")
    judge_model: str = option("", "model name sent to an endpoint; empty = first of /v1/models")
    judge_api: str = option("completions", "endpoint API: completions or chat")
    judge_top_logprobs: int = option(
        20,
        "endpoint: alternatives asked for per token (OpenAI allows 5 on completions, 20 on chat)",
    )
    api_key_env: str = option("OPENAI_API_KEY", "environment variable holding the endpoint's key")
    timeout: float = option(60.0, "seconds an endpoint request may take")
    max_retries: int = option(4, "retries of a failed endpoint request (exponential back-off)")
    retry_backoff: float = option(1.0, "first back-off wait in seconds (doubles per retry)")
    concurrency: int = option(8, "endpoint requests in flight at once")
    annotators: int = option(5, "judge=simulated: size of the annotator pool")
    overwrite: bool = option(False, "start again instead of continuing from judgments_output")
    progress: bool = option(True, "print progress")


def _text(record, name: str, value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(m, dict) and "content" in m for m in value):
        return "".join(str(m["content"]) for m in value)
    raise record.error(name, "expected a string (or assistant messages)")


def read_pairs(spec: str) -> tuple[list[Pair], int]:
    """The pairs of ``spec`` in order, and how many were skipped as identical."""
    pairs: list[Pair] = []
    skipped = 0
    for record in read_records(spec):
        data = record.data
        prompt = data.get("prompt")
        if not isinstance(prompt, (str, list)):
            raise record.error("prompt", "missing, or not a string or conversation")
        if "responses" in data:
            responses = data["responses"]
            if not isinstance(responses, list) or len(responses) < 2:
                raise record.error("responses", "expected a list of at least 2 responses")
            texts = [_text(record, f"responses[{i}]", r) for i, r in enumerate(responses)]
            candidates = list(itertools.combinations(texts, 2))
        elif "chosen" in data and "rejected" in data:
            candidates = [
                (
                    _text(record, "chosen", data["chosen"]),
                    _text(record, "rejected", data["rejected"]),
                )
            ]
        else:
            raise record.error("responses", "missing (need responses, or chosen and rejected)")
        for a, b in candidates:
            if a == b:
                skipped += 1
                continue
            pairs.append(Pair(len(pairs), prompt, a, b))
    return pairs, skipped


def pair_key(pair: Pair) -> str:
    raw = json.dumps([pair.prompt, pair.response_a, pair.response_b], sort_keys=True)
    return hashlib.sha1(raw.encode()).hexdigest()[:16]


def _read_judgments(path: Path, pairs: list[Pair]) -> dict[int, list[dict]]:
    done: dict[int, list[dict]] = {}
    if not path.exists():
        return done
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            judgment = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a crash: that pair is judged again
        index = judgment.get("pair")
        if (
            not isinstance(index, int)
            or index >= len(pairs)
            or (judgment.get("pair_key") != pair_key(pairs[index]))
        ):
            raise ConfigError(
                f"{path}:{number}: judgments of other pairs (a different train_data?); "
                "delete the file or pass overwrite=true"
            )
        done.setdefault(index, []).append(judgment)
    return done


def _gold_agreement(records: list[dict]) -> dict[str, float] | None:
    """Share of labels whose chosen response has the higher gold reward (world prompts only)."""
    from rlhfkit.synthetic import gold_reward

    agree = decided = 0
    try:
        for r in records:
            if not isinstance(r["prompt"], str):
                return None
            delta = gold_reward(r["prompt"], r["chosen"]) - gold_reward(r["prompt"], r["rejected"])
            if abs(delta) > 1e-9:
                decided += 1
                agree += delta > 0
    except DataError:
        return None
    if not decided:
        return None
    return {"gold_agreement": agree / decided, "gold_decided_pairs": decided}


def label(config: LabelConfig) -> dict[str, Any]:
    """Label every pair of ``config.train_data``; returns the summary (also written to disk)."""
    if not config.judge:
        raise ConfigError("judge: give a model directory, an http(s) URL or `simulated`")
    if not config.output:
        raise ConfigError("output: give the output JSONL file (output=FILE.jsonl)")
    if len(config.clamp) != 2 or not 0.0 <= config.clamp[0] <= config.clamp[1] <= 1.0:
        raise ConfigError(f"clamp: expected [low, high] in [0, 1], got {config.clamp}")
    constitution = load_constitution(config.constitution, config.prompt_format)
    if not constitution.comparison_principles:
        raise ConfigError(f"constitution: {constitution.source} has no comparison_principles")
    pairs, skipped = read_pairs(config.train_data)
    output = Path(config.output)
    judgments_path = (
        Path(config.judgments_output)
        if config.judgments_output
        else output.with_name(output.stem + ".judgments.jsonl")
    )
    judgments_path.parent.mkdir(parents=True, exist_ok=True)
    if config.overwrite and judgments_path.exists():
        judgments_path.unlink()
    done = _read_judgments(judgments_path, pairs)
    orders = (False, True) if config.both_orders else (False,)
    complete = {
        i
        for i, js in done.items()
        if {j["order"] for j in js} >= {"ab", "ba"}
        or (not config.both_orders and any(j["order"] == "ab" for j in js))
    }
    resumed = len(complete)
    if resumed:
        console.print(
            f"continuing: {resumed} of {len(pairs)} pairs already judged in "
            f"{judgments_path} (overwrite=true starts again)"
        )

    if config.judge == "simulated":
        judge: Any = SimulatedJudge(config.annotators)
    else:
        lm = load_text_model(
            config.judge,
            dtype=config.dtype,
            batch_size=config.batch_size * 2,
            max_prompt_length=config.max_prompt_length,
            stop=constitution.prompts.stop,
            endpoint_model=config.judge_model,
            api=config.judge_api,
            api_key_env=config.api_key_env,
            timeout=config.timeout,
            max_retries=config.max_retries,
            backoff=config.retry_backoff,
            concurrency=config.concurrency,
            top_logprobs=config.judge_top_logprobs,
        )
        judge = LMJudge(
            lm,
            constitution,
            chain_of_thought=config.chain_of_thought,
            sampling=SamplingParams(config.max_new_tokens, config.temperature, config.top_p),
        )

    pending = [p for p in pairs if p.index not in complete]
    judged_now = 0
    try:
        with judgments_path.open("a", encoding="utf-8") as handle:
            for start in range(0, len(pending), config.batch_size):
                chunk = pending[start : start + config.batch_size]
                items = [
                    (pair, swapped, draw_principle(constitution, config.seed, pair.index))
                    for pair in chunk
                    for swapped in orders
                ]
                results = judge.judge(items, seed=config.seed + chunk[0].index)
                for pair in chunk:
                    done[pair.index] = []
                for judgment in results:
                    pair = pairs[judgment["pair"]]
                    judgment["pair_key"] = pair_key(pair)
                    done[pair.index].append(judgment)
                    handle.write(json.dumps(judgment) + "\n")
                handle.flush()
                judged_now += len(chunk)
                if config.progress:
                    console.print(f"label: {resumed + judged_now}/{len(pairs)} pairs judged")
    except EndpointError as err:
        raise EndpointError(
            f"{err}. {resumed + judged_now} of {len(pairs)} pairs are judged and kept in "
            f"{judgments_path}; run the same command again to continue"
        ) from None

    clamp = tuple(config.clamp) if config.chain_of_thought else None
    records = [preference_record(pair, done[pair.index], judge.name, clamp=clamp) for pair in pairs]
    write_jsonl(output, records)
    all_judgments = [j for pair in pairs for j in done[pair.index]]
    sources: dict[str, int] = {}
    for j in all_judgments:
        sources[j["source"]] = sources.get(j["source"], 0) + 1
    summary: dict[str, Any] = {
        "pairs": len(pairs),
        "skipped_identical": skipped,
        "resumed_pairs": resumed,
        "judgments": len(all_judgments),
        "sources": sources,
        "mean_soft_label": sum(r["soft_label"] for r in records) / len(records)
        if records
        else None,
        # Mean P(first-shown option): 0.5 for a judge without position bias.
        "mean_p_first": (
            sum(j["p_first"] for j in all_judgments) / len(all_judgments) if all_judgments else None
        ),
        "judge": judge.name,
        "constitution": constitution.name,
    }
    client = getattr(getattr(judge, "lm", None), "client", None)
    if client is not None:
        summary["endpoint_retries"] = client.retries_used
    gold = _gold_agreement(records)
    if gold:
        summary.update(gold)
    write_json(output.with_name(output.stem + ".summary.json"), summary)
    line = f"wrote {len(records)} preference records to {output}"
    if gold:
        line += f" (agreement with the gold reward: {gold['gold_agreement']:.3f})"
    console.print(line)
    return summary


def run(config: LabelConfig) -> int:
    label(config)
    return 0


__all__ = ["LabelConfig", "label", "pair_key", "read_pairs", "run"]
