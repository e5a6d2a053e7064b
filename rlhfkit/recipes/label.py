"""`rlhfkit label judge=MODEL_DIR|URL|simulated train_data=PAIRS constitution=FILE output=FILE`:
AI preference labels (RL-CAI / RLAIF) for generated pairs.

Each pair of responses to a prompt (`generate`'s ``{"prompt", "responses": [...]}`` records, every
two responses of a record, or ``{"prompt", "chosen", "rejected"}`` records) is shown to the judge
as a multiple-choice question under a comparison principle drawn at random, in both orders; the
soft label is the position-debiased P(a beats b) (see `rlhfkit.feedback.ai_labeller`).

Output: ``output`` holds one preference record per pair ``{"prompt", "chosen", "rejected",
"soft_label", "principle", "judge"}`` (``soft_label`` = P(chosen beats rejected) in [0.5, 1]),
directly usable by `rlhfkit rm` and `rlhfkit dpo`; ``judgments_output`` (default: beside it,
``labels.judgments.jsonl`` for ``labels.jsonl``) holds every raw judgment, written as it is made,
so a run stopped by an endpoint that is down keeps what it did and a rerun of the same command
continues from there. Every judgment records the run's settings (`label_settings`: judge,
constitution, seed, orders, chain of thought, ...); a rerun with other settings is refused rather
than passing the old judgments off as its own. ``labels.summary.json`` (beside it) holds the
counts: judgments per source, undecided pairs (``soft_label`` 0.5, still written: the judge
expressed no preference), and on the embedded world the agreement of the decided labels with the
gold reward. A run whose judgments are mostly parsed from text or undecided says so on the console.

After a conversation prompt, ``chosen`` and ``rejected`` are assistant messages (TRL's
conversational format).
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhfkit.config import SEED_RANGE, check_limits, option
from rlhfkit.data.io import (
    check_output_file,
    read_records,
    read_work_log,
    write_json,
    write_jsonl,
)
from rlhfkit.errors import ConfigError, DataError, relabel_error
from rlhfkit.feedback.ai_labeller import (
    LMJudge,
    Pair,
    SimulatedJudge,
    constitution_digest,
    draw_principle,
    load_text_model,
    model_identity,
    preference_record,
    settings_error,
)
from rlhfkit.feedback.constitution import Constitution, load_constitution
from rlhfkit.feedback.openai_client import EndpointError, is_endpoint
from rlhfkit.rollout.sampling import SamplingParams
from rlhfkit.training.run import console


def _clamp_problem(clamp: list[float]) -> str | None:
    """A clamp range must hold 0.5: one without it would move a label across it (a preference
    for b written as a's)."""
    if len(clamp) != 2 or not 0.0 <= clamp[0] <= 0.5 <= clamp[1] <= 1.0:
        return "expected [low, high] with 0 <= low <= 0.5 <= high <= 1"
    return None


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
    judgments_output: str = option(
        "", "raw judgments JSONL; empty = beside output (labels.jsonl: labels.judgments.jsonl)"
    )
    chain_of_thought: bool = option(False, "the judge reasons first; labels clamped to `clamp`")
    clamp: list[float] = option(
        [0.4, 0.6],
        "[low, high] range of chain-of-thought soft labels (0 <= low <= 0.5 <= high <= 1)",
        check=_clamp_problem,
    )
    both_orders: bool = option(True, "judge each pair in both orders to cancel position bias")
    seed: int = option(0, "seed of principle draws and sampling", **SEED_RANGE)
    dtype: str = option("auto", "local judge weight dtype: auto, float32, bfloat16")
    batch_size: int = option(32, "pairs judged per step (and rows per forward pass)", minimum=1)
    max_prompt_length: int = option(
        1024,
        "longer judge prompts lose their start (local judge; also cut to its context)",
        minimum=1,
    )
    max_new_tokens: int = option(128, "tokens of chain-of-thought reasoning", minimum=1)
    temperature: float = option(0.0, "sampling temperature of the reasoning; 0 = greedy", minimum=0)
    top_p: float = option(1.0, "nucleus sampling of the reasoning", exclusive_minimum=0, maximum=1)
    judge_model: str = option("", "model name sent to an endpoint; empty = first of /v1/models")
    judge_api: str = option("completions", "endpoint API", choices=("completions", "chat"))
    judge_top_logprobs: int = option(
        20,
        "endpoint: alternatives asked for per token (OpenAI allows 5 on completions, 20 on chat)",
        minimum=0,
    )
    api_key_env: str = option("OPENAI_API_KEY", "environment variable holding the endpoint's key")
    timeout: float = option(60.0, "seconds an endpoint request may take", exclusive_minimum=0)
    max_retries: int = option(
        4, "retries of a failed endpoint request (exponential back-off)", minimum=0
    )
    retry_backoff: float = option(
        1.0, "first back-off wait in seconds (doubles per retry)", minimum=0
    )
    concurrency: int = option(8, "endpoint requests in flight at once", minimum=1)
    annotators: int = option(5, "judge=simulated: size of the annotator pool", minimum=1)
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
            pairs.append(Pair(len(pairs), prompt, a, b, record.source, record.line))
    return pairs, skipped


def pair_key(pair: Pair) -> str:
    raw = json.dumps([pair.prompt, pair.response_a, pair.response_b], sort_keys=True)
    return hashlib.sha1(raw.encode()).hexdigest()[:16]


#: A label this close to 0.5 is undecided: the judge expressed no preference.
UNDECIDED_TOLERANCE = 1e-9


def label_settings(config: LabelConfig, constitution: Constitution) -> dict[str, Any]:
    """Every setting the judgments depend on, recorded with each one.

    ``clamp`` is not among them: it is applied when the output is written, so a rerun with
    another clamp gives exactly what a fresh run would (for the simulated judge, which does not
    reason, the same holds for ``chain_of_thought``). Neither are the keys that only change how
    the work is done (``batch_size``, ``concurrency``, ``timeout``, retries).
    """
    settings: dict[str, Any] = {
        "judge": model_identity(config.judge),
        "constitution": constitution_digest(constitution, "comparison"),
        "seed": config.seed,
        "both_orders": config.both_orders,
    }
    if config.judge == "simulated":
        settings["annotators"] = config.annotators
        return settings
    settings["chain_of_thought"] = config.chain_of_thought
    if is_endpoint(config.judge):
        settings.update(
            judge_model=config.judge_model,
            judge_api=config.judge_api,
            judge_top_logprobs=config.judge_top_logprobs,
        )
    else:
        settings.update(dtype=config.dtype, max_prompt_length=config.max_prompt_length)
    if config.chain_of_thought:
        settings.update(
            max_new_tokens=config.max_new_tokens,
            temperature=config.temperature,
            top_p=config.top_p,
        )
    return settings


def _read_judgments(
    path: Path, pairs: list[Pair], settings: dict[str, Any]
) -> dict[int, list[dict]]:
    """The judgments already in ``path``, by pair index: the last one of each order (a line
    cut short by a crash is left out, and its pair judged again; the pair's judgments before
    the crash stay in the file, and the new ones replace them).

    Raises:
        ConfigError: a judgment of another pair, or one made with other settings.
    """
    done: dict[int, dict[str, dict]] = {}
    for number, judgment in read_work_log(path):
        refusal = settings_error(
            f"{path}:{number}", judgment.get("settings"), settings, "judgments"
        )
        if refusal:
            raise ConfigError(refusal)
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
        done.setdefault(index, {})[judgment.get("order")] = judgment
    return {index: list(by_order.values()) for index, by_order in done.items()}


def is_undecided(record: dict) -> bool:
    """True when the label expresses no preference (``soft_label`` 0.5)."""
    return abs(record["soft_label"] - 0.5) <= UNDECIDED_TOLERANCE


def _gold_agreement(records: list[dict]) -> dict[str, Any] | None:
    """Share of decided labels whose chosen response has the higher gold reward (world prompts
    only), over the pairs the gold reward decides.

    Returns:
        ``gold_agreement`` (absent when no label is decided), ``gold_decided_pairs`` (its
        denominator) and ``gold_undecided_pairs`` (pairs gold decides but the label does not:
        a label of 0.5 names a ``chosen`` only because some response has to come first); None
        off the world or when gold decides no pair.
    """
    from rlhfkit.synthetic import gold_reward

    agree = decided = undecided = 0
    try:
        for r in records:
            if not isinstance(r["prompt"], str):
                return None
            delta = gold_reward(r["prompt"], r["chosen"]) - gold_reward(r["prompt"], r["rejected"])
            if abs(delta) <= 1e-9:
                continue
            if is_undecided(r):
                undecided += 1
                continue
            decided += 1
            agree += delta > 0
    except DataError:
        return None
    if not decided and not undecided:
        return None
    out: dict[str, Any] = {"gold_decided_pairs": decided, "gold_undecided_pairs": undecided}
    if decided:
        out["gold_agreement"] = agree / decided
    return out


def judgment_warnings(
    sources: dict[str, int], undecided: int, pairs: int, config: LabelConfig
) -> list[str]:
    """Console warnings for judgments that carry little information: most of them parsed from
    the answer text (no option among the endpoint's top log-probs), or most pairs undecided."""
    warnings = []
    judgments = sum(sources.values())
    parsed = sources.get("parsed", 0)
    if judgments and parsed * 2 > judgments:
        warnings.append(
            f"{parsed} of {judgments} judgments were parsed from the answer text: the judge "
            "gave log-probs for neither option (none among its top "
            f"judge_top_logprobs={config.judge_top_logprobs}, or none at all); raise "
            "judge_top_logprobs, or use a judge that returns log-probs"
        )
    if pairs and undecided * 2 > pairs:
        warnings.append(
            f"{undecided} of {pairs} pairs are undecided (soft_label 0.5): the judge expressed "
            "no preference; they are written (a soft-label loss learns nothing from them) and "
            "left out of gold_agreement"
        )
    return warnings


def judgments_path(config: LabelConfig) -> Path:
    """``judgments_output``, else beside ``output`` (labels.jsonl: labels.judgments.jsonl)."""
    if config.judgments_output:
        return Path(config.judgments_output)
    output = Path(config.output)
    return output.with_name(output.stem + ".judgments.jsonl")


def summary_path(config: LabelConfig) -> Path:
    """Beside ``output`` (labels.jsonl: labels.summary.json)."""
    output = Path(config.output)
    return output.with_name(output.stem + ".summary.json")


def written_files(config: LabelConfig) -> list[Path]:
    """The files this config writes (see `Stage.writes`)."""
    if not config.output:
        return []
    return [Path(config.output), judgments_path(config), summary_path(config)]


def label(config: LabelConfig) -> dict[str, Any]:
    """Label every pair of ``config.train_data``; returns the summary (also written to disk)."""
    if not config.judge:
        raise ConfigError("judge: give a model directory, an http(s) URL or `simulated`")
    if not config.output:
        raise ConfigError("output: give the output JSONL file (output=FILE.jsonl)")
    check_limits(config)  # as the command line checks them, for a config built in Python
    check_output_file(config.output, "output", {"train_data": config.train_data})
    constitution = load_constitution(config.constitution, config.prompt_format)
    if not constitution.comparison_principles:
        raise ConfigError(f"constitution: {constitution.source} has no comparison_principles")
    pairs, skipped = read_pairs(config.train_data)
    if skipped:
        console.print(
            f"{skipped} pair(s) skipped: the two responses are identical", highlight=False
        )
    if not pairs:
        raise DataError(
            config.train_data, None, None, "no pairs to label (no records, or only identical pairs)"
        )
    if config.judge == "simulated":
        SimulatedJudge.check_pairs(pairs)
    settings = label_settings(config, constitution)
    output = Path(config.output)
    judgments = judgments_path(config)
    done = {} if config.overwrite else _read_judgments(judgments, pairs, settings)
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
            f"{judgments} (overwrite=true starts again)"
        )

    if config.judge == "simulated":
        judge: Any = SimulatedJudge(config.annotators)
    else:
        lm = _load_judge(
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

    # Only now that the judge has loaded: a judge that does not load leaves the files as they were.
    judgments.parent.mkdir(parents=True, exist_ok=True)
    if config.overwrite and judgments.exists():
        judgments.unlink()
    pending = [p for p in pairs if p.index not in complete]
    judged_now = 0
    try:
        with judgments.open("a", encoding="utf-8") as handle:
            for start in range(0, len(pending), config.batch_size):
                chunk = pending[start : start + config.batch_size]
                items = [
                    (pair, swapped, draw_principle(constitution, config.seed, pair.index))
                    for pair in chunk
                    for swapped in orders
                ]
                results = judge.judge(items, seed=config.seed)
                for pair in chunk:
                    done[pair.index] = []
                for judgment in results:
                    pair = pairs[judgment["pair"]]
                    judgment["pair_key"] = pair_key(pair)
                    judgment["settings"] = settings
                    done[pair.index].append(judgment)
                    handle.write(json.dumps(judgment) + "\n")
                handle.flush()
                judged_now += len(chunk)
                if config.progress:
                    console.print(f"label: {resumed + judged_now}/{len(pairs)} pairs judged")
    except EndpointError as err:
        raise EndpointError(
            f"{err}. {resumed + judged_now} of {len(pairs)} pairs are judged and kept in "
            f"{judgments}; run the same command again to continue"
        ) from None

    clamp = tuple(config.clamp) if config.chain_of_thought else None
    records = [preference_record(pair, done[pair.index], judge.name, clamp=clamp) for pair in pairs]
    write_jsonl(output, records)
    all_judgments = [j for pair in pairs for j in done[pair.index]]
    sources: dict[str, int] = {}
    for j in all_judgments:
        sources[j["source"]] = sources.get(j["source"], 0) + 1
    undecided = sum(is_undecided(r) for r in records)
    summary: dict[str, Any] = {
        "pairs": len(pairs),
        "skipped_identical": skipped,
        "resumed_pairs": resumed,
        "judgments": len(all_judgments),
        "sources": sources,
        "undecided_pairs": undecided,
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
    lm = getattr(judge, "lm", None)
    client = getattr(lm, "client", None)
    if client is not None:
        summary["endpoint_retries"] = client.retries_used
    if hasattr(lm, "prompts_cut"):
        summary["judge_prompts_cut"] = lm.prompts_cut
    gold = _gold_agreement(records)
    if gold:
        summary.update(gold)
    write_json(summary_path(config), summary)
    if sources:
        counts = ", ".join(f"{n} {name}" for name, n in sorted(sources.items()))
        console.print(f"judgments by source: {counts}")
    for warning in judgment_warnings(sources, undecided, len(records), config):
        console.print(f"[yellow]warning[/]: {warning}", highlight=False)
    if summary.get("judge_prompts_cut"):
        console.print(
            f"[yellow]warning[/]: {summary['judge_prompts_cut']} judge prompts were longer than "
            "max_prompt_length (or the judge's context) and lost their start",
            highlight=False,
        )
    console.print(_final_line(len(records), output, undecided, gold), highlight=False)
    return summary


def _load_judge(judge: str, **kwargs: Any):
    """`load_text_model(judge)`, its errors naming the `judge` key (the model loader names
    `model`)."""
    try:
        return load_text_model(judge, **kwargs)
    except ConfigError as err:
        raise relabel_error(err, "judge") from None


def _final_line(n_records: int, output: Path, undecided: int, gold: dict | None) -> str:
    """The closing console line: what was written, how much of it is undecided, and the
    agreement of the decided labels with the gold reward (world prompts)."""
    line = f"wrote {n_records} preference records to {output}"
    notes = []
    if undecided:
        notes.append(f"{undecided} undecided (soft_label 0.5)")
    if gold and "gold_agreement" in gold:
        notes.append(
            f"agreement with the gold reward: {gold['gold_agreement']:.3f} "
            f"over {gold['gold_decided_pairs']} decided pairs"
        )
    elif gold:
        notes.append("no decided pair to compare with the gold reward")
    return line + (f" ({'; '.join(notes)})" if notes else "")


def run(config: LabelConfig) -> int:
    label(config)
    return 0


__all__ = [
    "LabelConfig",
    "is_undecided",
    "judgment_warnings",
    "label",
    "label_settings",
    "pair_key",
    "read_pairs",
    "run",
]
