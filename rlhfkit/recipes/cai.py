"""`rlhfkit cai revise model=... train_data=PROMPTS constitution=FILE rounds=N output_dir=OUT`:
supervised Constitutional AI (SL-CAI, Bai et al. 2022, sec. 3).

Per prompt: sample a response from ``model``; then ``rounds`` times draw a critique principle at
random, ask the critic (``critic``, default the model itself) for a critique of the current
response by it, then for a revision given the critique; the revision becomes the current response.
Prompt templates and few-shot examples come from the constitution (``prompts:``) or
``prompt_format=FILE.yaml``.

Outputs in OUT:

* ``chains.jsonl``: per prompt ``{"index", "prompt", "response", "steps": [{"round",
  "principle", "critique", "revision"}], "final", "settings"}``, appended as the work goes, so a
  stopped run keeps what it did and a rerun continues after the last prompt written
  (``overwrite=true`` starts again). ``settings`` (`revise_settings`: models, constitution,
  seed, rounds, sampling) must equal the rerun's, else the rerun is refused;
* ``sft.jsonl``: ``{"prompt", "completion": final revision}`` -- input of `rlhfkit sft`;
* ``preferences.jsonl``: ``{"prompt", "chosen": final revision, "rejected": original}`` where the
  two differ -- input of `rlhfkit dpo` / `rlhfkit rm`;
* ``config.yaml`` and ``summary.json`` (counts, prompts cut to fit the model; on the embedded
  world, the gold reward and its criteria before and after revision).

After a conversation prompt, ``completion``, ``chosen`` and ``rejected`` are assistant messages
``[{"role": "assistant", "content": ...}]`` (TRL's conversational format). A local model's
prompts are cut (their start dropped) to ``max_prompt_length`` and to the model's context minus
the tokens to generate; the summary counts them.

Departure from the paper: the paper fine-tunes on revisions of a helpful-only model's responses to
red-team prompts; this stage produces the data and leaves the fine-tuning to `rlhfkit sft`.
"""

from __future__ import annotations

import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhfkit.config import (
    SEED_RANGE,
    check_limits,
    check_unique_overrides,
    describe,
    load_config,
    option,
    write_config,
)
from rlhfkit.data.datasets import load_prompts
from rlhfkit.data.formats import PromptExample, as_reply
from rlhfkit.data.io import read_work_log, write_json, write_jsonl
from rlhfkit.errors import ConfigError, DataError, RlhfkitError
from rlhfkit.feedback.ai_labeller import (
    LocalLM,
    constitution_digest,
    load_text_model,
    model_identity,
    settings_error,
)
from rlhfkit.feedback.constitution import Constitution, CritiquePrinciple, load_constitution
from rlhfkit.feedback.openai_client import EndpointError, is_endpoint
from rlhfkit.rollout.sampling import SamplingParams
from rlhfkit.training.run import console


@dataclass
class CAIReviseConfig:
    """Critique-and-revise: sample, then N rounds of critique and revision by random principles."""

    model: str = option("", "policy that writes the first responses: a directory, hub id or URL")
    critic: str = option("", "model that critiques and revises; empty = the policy itself")
    train_data: str = option("", "prompts ({prompt} records; any supported format)")
    constitution: str = option("default", "constitution: default, world, or a YAML file")
    prompt_format: str = option("", "YAML file of prompt templates overriding the constitution's")
    rounds: int = option(1, "critique-revision rounds per prompt", minimum=1)
    output_dir: str = option("runs/cai", "where chains.jsonl, sft.jsonl, preferences.jsonl go")
    seed: int = option(0, "seed of principle draws and sampling", **SEED_RANGE)
    dtype: str = option("auto", "local model weight dtype: auto, float32, bfloat16")
    max_new_tokens: int = option(64, "maximum tokens of a first response", minimum=1)
    temperature: float = option(
        1.0, "sampling temperature of first responses; 0 = greedy", minimum=0
    )
    top_p: float = option(
        1.0, "nucleus sampling of first responses", exclusive_minimum=0, maximum=1
    )
    edit_max_new_tokens: int = option(128, "maximum tokens of a critique or a revision", minimum=1)
    edit_temperature: float = option(
        0.0, "temperature of critiques and revisions; 0 = greedy", minimum=0
    )
    edit_top_p: float = option(
        1.0, "nucleus sampling of critiques and revisions", exclusive_minimum=0, maximum=1
    )
    batch_size: int = option(32, "prompts processed together (and written together)", minimum=1)
    max_prompt_length: int = option(
        1024,
        "longer prompts lose their start (also cut to the context minus the new tokens)",
        minimum=1,
    )
    limit: int = option(0, "only the first N prompts; 0 = all", minimum=0)
    endpoint_model: str = option("", "model name sent to an endpoint; empty = first of /v1/models")
    api: str = option("completions", "endpoint API", choices=("completions", "chat"))
    api_key_env: str = option("OPENAI_API_KEY", "environment variable holding the endpoint's key")
    timeout: float = option(60.0, "seconds an endpoint request may take", exclusive_minimum=0)
    max_retries: int = option(
        4, "retries of a failed endpoint request (exponential back-off)", minimum=0
    )
    retry_backoff: float = option(
        1.0, "first back-off wait in seconds (doubles per retry)", minimum=0
    )
    concurrency: int = option(8, "endpoint requests in flight at once", minimum=1)
    overwrite: bool = option(False, "start again instead of continuing from chains.jsonl")
    progress: bool = option(True, "print progress")


def draw_critique_principle(
    constitution: Constitution, seed: int, prompt_index: int, round_index: int
) -> CritiquePrinciple:
    """Deterministic in (seed, prompt, round), so a resumed run draws what an uninterrupted one
    would."""
    if not constitution.critique_principles:
        raise ConfigError(f"constitution: {constitution.source} has no critique_principles")
    rng = random.Random(f"{seed}:{prompt_index}:{round_index}")
    return rng.choice(constitution.critique_principles)


def revise_settings(config: CAIReviseConfig, constitution: Constitution) -> dict[str, Any]:
    """Every setting the chains depend on, recorded with each chain.

    Keys that only change how the work is done (``batch_size``, ``concurrency``, ``timeout``,
    retries, ``limit``) are left out.
    """
    models = [config.model, config.critic or config.model]
    settings: dict[str, Any] = {
        "model": model_identity(models[0]),
        "critic": model_identity(models[1]),
        "constitution": constitution_digest(constitution, "critique"),
        "seed": config.seed,
        "rounds": config.rounds,
        "max_new_tokens": config.max_new_tokens,
        "temperature": config.temperature,
        "top_p": config.top_p,
        "edit_max_new_tokens": config.edit_max_new_tokens,
        "edit_temperature": config.edit_temperature,
        "edit_top_p": config.edit_top_p,
    }
    if any(is_endpoint(m) for m in models):
        settings.update(endpoint_model=config.endpoint_model, api=config.api)
    if not all(is_endpoint(m) for m in models):
        settings.update(dtype=config.dtype, max_prompt_length=config.max_prompt_length)
    return settings


def _check_chains(
    chains: list[dict], examples: list[PromptExample], settings: dict[str, Any], path: Path
) -> None:
    """Refuse chains of other prompts or made with other settings (``FILE:LINE: ...``)."""
    # Chains past the prompts of this run (a lower `limit` than the run that wrote them) are
    # kept in the file but not checked or used.
    for i, chain in enumerate(chains[: len(examples)]):
        refusal = settings_error(f"{path}:{i + 1}", chain.get("settings"), settings, "chains")
        if refusal:
            raise ConfigError(refusal)
        if chain.get("prompt") != examples[i].prompt:
            raise ConfigError(
                f"{path}:{i + 1}: chains of other prompts (a different train_data?); "
                "delete it or pass overwrite=true"
            )


def output_rows(chains: list[dict]) -> tuple[list[dict], list[dict]]:
    """The SFT rows (final revisions) and preference rows (final revision over the original,
    where they differ) of ``chains``, responses in their prompt's format (`as_reply`)."""
    sft_rows = [
        {"prompt": c["prompt"], "completion": as_reply(c["prompt"], c["final"])}
        for c in chains
        if c["final"].strip()  # `rlhfkit sft` refuses an empty (or blank) completion
    ]
    pref_rows = [
        {
            "prompt": c["prompt"],
            "chosen": as_reply(c["prompt"], c["final"]),
            "rejected": as_reply(c["prompt"], c["response"]),
        }
        for c in chains
        # Differing in whitespace only is no preference (DPO would learn the whitespace).
        if c["final"].strip() and c["final"].strip() != c["response"].strip()
    ]
    return sft_rows, pref_rows


def as_revision_of(response: str, revision: str) -> str:
    """``revision`` with the leading whitespace of the ``response`` it replaces and no trailing
    whitespace: revisions follow ``Revision:`` and open with a space a first response to a chat
    template does not have, so chosen and rejected would differ by it alone."""
    return response[: len(response) - len(response.lstrip())] + revision.strip()


def _read_chains(path: Path) -> list[dict]:
    """The chains written so far (`read_work_log`: a last line cut short by a crash is dropped
    and that prompt done again; a bad line before the last is an error)."""
    return [chain for _, chain in read_work_log(path)]


def _world_scores(chains: list[dict]) -> dict[str, float] | None:
    """Mean gold reward and criteria of first responses and final revisions (world prompts)."""
    from rlhfkit.synthetic import gold_criteria, gold_reward

    totals: dict[str, float] = {}
    try:
        for chain in chains:
            if not isinstance(chain["prompt"], str):
                return None
            for when, text in (("before", chain["response"]), ("after", chain["final"])):
                crit = gold_criteria(chain["prompt"], text)
                crit["reward"] = gold_reward(chain["prompt"], text)
                for name, value in crit.items():
                    key = f"gold_{name}_{when}"
                    totals[key] = totals.get(key, 0.0) + value
    except DataError:
        return None
    if not chains:
        return None
    return {k: v / len(chains) for k, v in sorted(totals.items())}


def revise(config: CAIReviseConfig) -> dict[str, Any]:
    """Run critique-and-revise over ``config.train_data``; returns the summary."""
    if not config.model:
        raise ConfigError("model: give the policy (a directory, hub id or URL)")
    if not config.train_data:
        raise ConfigError("train_data: give a prompt file (train_data=FILE)")
    check_limits(config)  # as the command line checks them, for a config built in Python
    constitution = load_constitution(config.constitution, config.prompt_format)
    if not constitution.critique_principles:
        raise ConfigError(f"constitution: {constitution.source} has no critique_principles")
    examples = load_prompts(config.train_data)
    if config.limit > 0:
        examples = examples[: config.limit]
    settings = revise_settings(config, constitution)
    out = Path(config.output_dir)
    chains_path = out / "chains.jsonl"
    chains = [] if config.overwrite else _read_chains(chains_path)
    _check_chains(chains, examples, settings, chains_path)
    resumed = min(len(chains), len(examples))

    endpoint_kw = dict(
        dtype=config.dtype,
        batch_size=config.batch_size,
        max_prompt_length=config.max_prompt_length,
        stop=constitution.prompts.stop,
        endpoint_model=config.endpoint_model,
        api=config.api,
        api_key_env=config.api_key_env,
        timeout=config.timeout,
        max_retries=config.max_retries,
        backoff=config.retry_backoff,
        concurrency=config.concurrency,
    )
    pending = list(range(resumed, len(examples)))
    models: list[Any] = []
    if pending:
        policy = load_text_model(config.model, **endpoint_kw)
        critic = (
            policy
            if not config.critic or config.critic == config.model
            else load_text_model(config.critic, **endpoint_kw)
        )
        models = [policy] if critic is policy else [policy, critic]
    # Only now: a refused run, or a model that does not load, leaves the output directory as
    # it was (the config of the run that wrote the chains).
    if config.overwrite:  # every output of the earlier run, so none is left beside new chains
        for name in ("chains.jsonl", "sft.jsonl", "preferences.jsonl", "summary.json"):
            (out / name).unlink(missing_ok=True)
    write_config(out, "cai-revise", config)
    # Rewrite without any partial last line before appending.
    write_jsonl(chains_path, chains)
    if resumed:
        console.print(f"continuing: {resumed} of {len(examples)} prompts already in {chains_path}")
    first_params = SamplingParams(config.max_new_tokens, config.temperature, config.top_p)
    edit_params = SamplingParams(
        config.edit_max_new_tokens, config.edit_temperature, config.edit_top_p
    )
    try:
        with chains_path.open("a", encoding="utf-8") as handle:
            for start in range(0, len(pending), config.batch_size):
                indices = pending[start : start + config.batch_size]
                prompts = [examples[i].prompt for i in indices]
                # prompt i's seeds: its first response, then each round's critique and revision
                seeds = [config.seed + i * (2 * config.rounds + 1) for i in indices]
                texts = [_policy_prompt(policy, p) for p in prompts]
                responses = policy.generate(texts, first_params, seeds)
                current = list(responses)
                steps: list[list[dict]] = [[] for _ in indices]
                for r in range(config.rounds):
                    principles = [
                        draw_critique_principle(constitution, config.seed, i, r) for i in indices
                    ]
                    critique_prompts = [
                        constitution.critique_prompt(pr, p, c)
                        for pr, p, c in zip(principles, prompts, current, strict=True)
                    ]
                    critiques = critic.generate(
                        critique_prompts, edit_params, [s + 2 * r + 1 for s in seeds]
                    )
                    revision_prompts = [
                        constitution.revision_prompt(pr, p, c, k)
                        for pr, p, c, k in zip(principles, prompts, current, critiques, strict=True)
                    ]
                    revisions = critic.generate(
                        revision_prompts, edit_params, [s + 2 * r + 2 for s in seeds]
                    )
                    for j, (pr, k, v) in enumerate(
                        zip(principles, critiques, revisions, strict=True)
                    ):
                        steps[j].append(
                            {"round": r, "principle": pr.name, "critique": k, "revision": v}
                        )
                        # An empty revision leaves the response as it was.
                        if v.strip():
                            current[j] = as_revision_of(responses[j], v)
                for j, i in enumerate(indices):
                    chain = {
                        "index": i,
                        "prompt": prompts[j],
                        "response": responses[j],
                        "steps": steps[j],
                        "final": current[j],
                        "settings": settings,
                    }
                    chains.append(chain)
                    handle.write(json.dumps(chain) + "\n")
                handle.flush()
                if config.progress:
                    console.print(f"cai revise: {len(chains)}/{len(examples)} prompts")
    except EndpointError as err:
        raise EndpointError(
            f"{err}. {len(chains)} of {len(examples)} prompts are done and kept in "
            f"{chains_path}; run the same command again to continue"
        ) from None

    chains = chains[: len(examples)]  # a lower `limit` than the run that wrote more
    sft_rows, pref_rows = output_rows(chains)
    write_jsonl(out / "sft.jsonl", sft_rows)
    write_jsonl(out / "preferences.jsonl", pref_rows)
    principle_counts: dict[str, int] = {}
    for c in chains:
        for s in c["steps"]:
            principle_counts[s["principle"]] = principle_counts.get(s["principle"], 0) + 1
    summary: dict[str, Any] = {
        "prompts": len(chains),
        "rounds": config.rounds,
        "resumed_prompts": resumed,
        "revised": len(pref_rows),
        "revised_fraction": len(pref_rows) / len(chains) if chains else 0.0,
        "sft_records": len(sft_rows),
        "preference_records": len(pref_rows),
        "principles": principle_counts,
        "constitution": constitution.name,
        # Prompts of this run (first responses, critiques, revisions) that lost their start.
        "prompts_cut": sum(getattr(m, "prompts_cut", 0) for m in models),
    }
    world = _world_scores(chains)
    if world:
        summary.update(world)
    write_json(out / "summary.json", summary)
    if summary["prompts_cut"]:
        console.print(
            f"[yellow]warning[/]: {summary['prompts_cut']} prompts lost their start to fit "
            f"max_prompt_length={config.max_prompt_length} or the model's context minus the "
            "tokens to generate; shorten the few-shot text (prompt_format=), lower "
            "edit_max_new_tokens or raise max_prompt_length",
            highlight=False,
        )
    line = f"wrote {len(sft_rows)} SFT and {len(pref_rows)} preference records to {out}"
    if world:
        line += (
            f" (gold safety {world['gold_safety_before']:.3f} -> {world['gold_safety_after']:.3f},"
            f" gold reward {world['gold_reward_before']:.3f} -> {world['gold_reward_after']:.3f})"
        )
    console.print(line)
    return summary


def _policy_prompt(policy: Any, prompt: Any) -> str:
    """The text the policy continues: chat template for conversations on a local model."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(policy, LocalLM):
        from rlhfkit.data.tokenize import render_prompt

        return render_prompt(policy.tokenizer, prompt)
    from rlhfkit.feedback.constitution import prompt_text

    return prompt_text(prompt) + "\nAssistant:"


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------

USAGE = "usage: rlhfkit cai revise [--config FILE.yaml] [key=value ...]"


def _help() -> str:
    from rlhfkit.config import key_lines

    doc = (CAIReviseConfig.__doc__ or "").strip()
    lines = [USAGE, "", doc, "", "keys (key=value or --key value):"]
    return "\n".join(lines + key_lines(describe(CAIReviseConfig)))


def main(argv: list[str]) -> int:
    """`rlhfkit cai revise ...` (the CLI hands over the arguments after `cai`)."""
    if not argv or argv[0] in ("-h", "--help", "help"):
        usage = (
            f"{USAGE}\n\ncommands:\n  revise  critique-and-revise (SL-CAI); "
            "`rlhfkit cai revise --help` lists its keys\n\nAI preference labels (RL-CAI): "
            "`rlhfkit label --help`"
        )
        # Help asked for is an answer (0); a missing command is a usage error (2), as argparse.
        print(usage, file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command != "revise":
        raise RlhfkitError(f"cai: unknown command {command!r}; expected `revise`")
    if any(a in ("-h", "--help") for a in rest):
        print(_help())
        return 0
    from rlhfkit.config import split_args

    config_file, overrides = split_args(rest)
    check_unique_overrides(overrides)
    revise(load_config(CAIReviseConfig, config_file, overrides, stage="cai-revise"))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
