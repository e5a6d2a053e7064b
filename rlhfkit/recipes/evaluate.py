"""`rlhfkit eval`: evaluation entry point.

Modes (chosen by which keys are set; each mode is a function in `MODES`, tried in order):

* scoring — `rlhfkit eval reward_model=DIR data=FILE [output=FILE]`: score every response of
  `data` with a reward model (normalisation applied as stored) and write one JSONL row per
  record with its scores. Records may be

  - `{prompt, completion}` → adds `score`;
  - `{prompt, responses: [...]}` → adds `scores`;
  - `{prompt, chosen, rejected}` (preference) → adds `chosen_score`, `rejected_score`;
  - `{prompt, responses, ranking}` (ranking) → adds `scores`;

  with preference or ranking records, `summary.json` also reports `accuracy` (pairs ranked as
  labelled, ties half) and `margin`. For an ensemble, rows get `heads` (K scores per response,
  normalised) and the summary `disagreement` (mean std over heads). `reward_model` may be any
  reward spec `load_reward_function` accepts (directory, several directories joined by `,`
  as one ensemble, http URL, python:module:function).

* policy evaluation — `rlhfkit eval policies=DIR,... reference=DIR prompts=FILE
  [reward_model=...] [gold_reward=...]`: see `evaluate_policies`.

Each mode has its own keys (`SCORING_KEYS`, `POLICY_KEYS`); a key of the other mode given a
non-default value is a one-line error, not silently dropped (`check_mode_keys`).

Adding a mode (e.g. policy evaluation with `policies`, `reference`, `gold_reward`, `best_of_n`):
add its keys to `EvalConfig` (or a new option group), write `def _my_mode(config) -> dict`, and
insert `(predicate, _my_mode)` into `MODES` before scoring if its keys should take precedence.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rlhfkit.config import BaseConfig, option
from rlhfkit.data.formats import parse_scored
from rlhfkit.data.io import check_output_file, read_records, write_jsonl
from rlhfkit.errors import ConfigError, DataError
from rlhfkit.eval.reward_metrics import head_disagreement, mean_margin, pairwise_accuracy
from rlhfkit.losses.bradley_terry import ranking_pairs
from rlhfkit.training.run import Run


@dataclass
class EvalConfig(BaseConfig):
    model: str = option("", "not used by eval (refused): see policies, reference, reward_model")
    output_dir: str = option("runs/eval", "where config.yaml and summary.json go")
    dtype: str = option(
        "auto",
        "weight dtype of the models loaded: float32, bfloat16, float16, or auto: the reward "
        "model in bfloat16 on a GPU (float32 on CPU), the policies and the reference in float32 "
        "(the KL sums per-token log-ratios, which 16-bit weights blur)",
    )
    reward_model: str = option(
        "",
        "reward to score with: a reward-model directory (several joined by ',' = an ensemble), "
        "an http URL or python:mod:fn",
    )
    data: str = option("", "records to score (completion, responses, preference or ranking)")
    output: str = option("", "scored JSONL to write; empty = OUTPUT_DIR/scores.jsonl")
    batch_size: int = option(16, "rows per forward pass when scoring")
    normalized: bool = option(True, "apply the reward model's stored normalisation")
    max_length: int = option(0, "maximum prompt + response tokens; 0 = as the model was trained")
    progress: bool = option(True, "show a progress bar")
    # Policy evaluation (`policies=...`): each policy against the reference, on `prompts`.
    policies: list[str] = option(
        [], "policies to evaluate: model dirs, optionally named (name=DIR); comma-separated"
    )
    reference: str = option(
        "", "the reference policy (e.g. the SFT model) for KL and win rates; optionally NAME=DIR"
    )
    prompts: str = option(
        "",
        "held-out prompts ({prompt} records, plain text or conversations rendered with the chat "
        "template) to sample the policies on",
    )
    gold_reward: str = option("", "a known gold reward (same specs as reward_model), if any")
    best_of_n: int = option(
        64, "best-of-n of the reference for n = 1, 2, 4, ... up to this; 0 = off"
    )
    max_new_tokens: int = option(64, "maximum tokens per sampled response")
    max_prompt_length: int = option(
        0,
        "longer prompts lose their start before sampling, as in ppo and generate (a prompt "
        "past the model's context cannot be sampled from); 0 = whole prompts",
        minimum=0,
    )
    temperature: float = option(
        1.0,
        "sampling temperature of every policy (> 0); the KL is measured between the tempered "
        "policy and the tempered reference, the distributions sampled from",
    )
    top_p: float = option(1.0, "nucleus sampling: keep the smallest set of tokens with this mass")
    diagnose_runs: list[str] = option(
        [],
        "RL run directories (ppo output_dir) whose metrics.jsonl is checked for the proxy rising "
        "while the gold reward falls, and for KL growth; their curves go in the report",
    )


#: Keys of each mode; a key of the other mode set to a non-default value is refused
#: (`check_mode_keys`). `reward_model`, `dtype`, `output_dir`, `seed` and `progress` serve both.
SCORING_KEYS = ("data", "output", "batch_size", "normalized", "max_length")
POLICY_KEYS = (
    "policies",
    "reference",
    "prompts",
    "gold_reward",
    "best_of_n",
    "max_new_tokens",
    "temperature",
    "top_p",
    "diagnose_runs",
    "max_prompt_length",
)


def _defaults() -> dict:
    """Every top-level `EvalConfig` key's default value."""
    out = {}
    for f in dataclasses.fields(EvalConfig):
        factory = f.default_factory
        out[f.name] = factory() if factory is not dataclasses.MISSING else f.default
    return out


def check_mode_keys(config: EvalConfig, policy_mode: bool) -> None:
    """Refuse keys eval would not use: `model` (eval takes `policies`, `reference` and
    `reward_model`), and the keys of the mode not running. Checked before anything loads."""
    defaults = _defaults()
    if config.model != defaults["model"]:
        raise ConfigError(
            f"model: not used by eval (got {config.model!r}); give the policies to evaluate as "
            "policies=DIR,... with reference=DIR, or the scorer as reward_model=DIR"
        )
    foreign = SCORING_KEYS if policy_mode else POLICY_KEYS
    for key in foreign:
        value = getattr(config, key)
        if value == defaults[key]:
            continue
        if policy_mode:
            raise ConfigError(
                f"{key}: a key of scoring mode (reward_model=... data=...), not used when "
                f"evaluating policies (policies=...), got {value!r}; run each mode as its own "
                "`rlhfkit eval`"
            )
        raise ConfigError(
            f"{key}: a key of policy evaluation (policies=... reference=... prompts=...), not "
            f"used when scoring data, got {value!r}"
        )


def score_data(config: EvalConfig) -> dict:
    """Scoring mode: see the module docstring."""
    from rlhfkit.models.loading import resolve_dtype
    from rlhfkit.models.reward_fn import load_reward_function

    check_mode_keys(config, policy_mode=False)
    if config.batch_size < 1:
        raise ConfigError(f"batch_size: must be >= 1, got {config.batch_size}")
    if config.max_length < 0:
        raise ConfigError(f"max_length: must be >= 0 (0 = as trained), got {config.max_length}")
    resolve_dtype(config.dtype)  # an unknown dtype is a one-line error before anything loads
    if config.output:
        check_output_file(config.output, "output", {"data": config.data})
    run = Run(config, "eval")
    records = read_records(config.data)
    if not records:
        raise DataError(config.data, None, None, "no records")
    parsed = [parse_scored(record) for record in records]
    prompts, responses = [], []
    for item in parsed:
        for text in item.responses:
            prompts.append(item.prompt)
            responses.append(text)
    kwargs = {
        "batch_size": config.batch_size,
        "normalized": config.normalized,
        "dtype": config.dtype,
    }
    if config.max_length > 0:
        kwargs["max_length"] = config.max_length
    scorer = load_reward_function(config.reward_model, **kwargs)
    heads = None
    if hasattr(scorer, "score_heads"):
        heads = scorer.score_heads(prompts, responses)
        scores = [sum(h) / len(h) for h in heads]
    else:
        scores = scorer(prompts, responses)
    ensemble = heads is not None and len(heads[0]) > 1

    rows, chosen, rejected = [], [], []
    cursor = 0
    for record, item in zip(records, parsed, strict=True):
        kind, count = item.kind, len(item.responses)
        mine = scores[cursor : cursor + count]
        mine_heads = heads[cursor : cursor + count] if ensemble else None
        cursor += count
        row = dict(record.data)
        if kind == "completion":
            row["score"] = mine[0]
        elif kind == "preference":
            row["chosen_score"], row["rejected_score"] = mine
            chosen.append(mine[0])
            rejected.append(mine[1])
        else:
            row["scores"] = mine
            if kind == "ranking":
                for better, worse in ranking_pairs(list(item.example.ranking)):
                    chosen.append(mine[better])
                    rejected.append(mine[worse])
        if mine_heads is not None:
            row["heads"] = mine_heads if kind != "completion" else mine_heads[0]
        rows.append(row)

    output = Path(config.output) if config.output else run.out / "scores.jsonl"
    if run.is_main:
        write_jsonl(output, rows)
    mean = sum(scores) / len(scores)
    summary: dict = {
        "records": len(records),
        "scored": len(scores),
        "score_mean": mean,
        "score_std": math.sqrt(sum((s - mean) ** 2 for s in scores) / len(scores)),
        "output": str(output),
    }
    if chosen:
        summary["accuracy"] = pairwise_accuracy(chosen, rejected)
        summary["margin"] = mean_margin(chosen, rejected)
        summary["pairs"] = len(chosen)
    if ensemble:
        summary["disagreement"] = head_disagreement(heads)
    run.summary(summary)
    message = f"[green]scored[/] {len(scores)} responses → {output}"
    if chosen:
        message += f" (accuracy {summary['accuracy']:.3f} on {len(chosen)} pairs)"
    run.print(message)
    return summary


def _check_sampling(config: EvalConfig) -> None:
    """Sampling settings policy evaluation can use (checked before any model loads)."""
    if config.temperature <= 0:
        raise ConfigError(
            f"temperature: must be > 0 (got {config.temperature}); policy evaluation samples, "
            "and its KL and best-of-n need a sampling distribution"
        )
    if not 0 < config.top_p <= 1:
        raise ConfigError(f"top_p: must be in (0, 1], got {config.top_p}")
    if config.max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens: must be at least 1, got {config.max_new_tokens}")
    if config.best_of_n < 0:
        raise ConfigError(f"best_of_n: must be >= 0 (0 = off), got {config.best_of_n}")


def policy_names(policies: list[str], reference_name: str) -> dict[str, str]:
    """{name: directory} of `policies` (`NAME=DIR` or `DIR`). A directory's name is its stage's
    (`runs/ppo/model` -> `ppo`, `runs/ppo` -> `ppo`), its whole path where two would share one;
    a name given twice, or the reference's or a best-of-n row's, is a one-line error (a later
    policy silently replaced an earlier one's row)."""
    named: dict[str, str] = {}
    taken = lambda name: (  # noqa: E731
        name in named or name == reference_name or re.fullmatch(r"best_of_\d+", name) is not None
    )
    for item in policies:
        given, _, directory = item.rpartition("=")
        path = Path(directory)
        name = given or (path.parent.name if path.name == "model" else path.name) or directory
        if not given and taken(name):
            name = directory
        if taken(name):
            raise ConfigError(
                f"policies: two rows would be named {name!r} (policies, reference={reference_name}"
                ", best_of_N); name each policy as NAME=DIR"
            )
        named[name] = run_model(directory)
    return named


def run_model(directory: str) -> str:
    """A run directory (an sft, dpo or ppo OUT) stands for the model it exported, OUT/model;
    anything else (a model directory, a hub id) is itself."""
    from rlhfkit.models.loading import run_directory_model

    return run_directory_model(directory) or directory


def evaluate_policies(config: EvalConfig) -> dict:
    """Policy mode: reward, gold reward, KL to the reference, win rates, best-of-n; writes
    OUTPUT_DIR/eval.json (the report's input) and summary.json."""
    from rlhfkit.data.datasets import load_prompts
    from rlhfkit.data.io import write_json
    from rlhfkit.eval.policy_eval import evaluate_against_reference, training_diagnostics
    from rlhfkit.models.loading import resolve_dtype
    from rlhfkit.models.reward_fn import load_reward_function

    check_mode_keys(config, policy_mode=True)
    resolve_dtype(config.dtype)  # an unknown dtype is a one-line error before anything loads
    if not config.reference or not config.prompts:
        raise ConfigError("eval: policy evaluation needs reference=DIR and prompts=FILE")
    reference_name, _, reference = config.reference.rpartition("=")
    reference = run_model(reference)
    named = policy_names(config.policies, reference_name or "reference")
    from rlhfkit.models.loading import check_model_source

    check_model_source(reference, "reference")  # before any policy is sampled, by its key
    for directory in named.values():
        check_model_source(directory, "policies")
    runs: dict[str, Path] = {}
    for directory in map(Path, config.diagnose_runs):  # named by directory, unless two clash
        runs[directory.name if directory.name not in runs else str(directory)] = directory
    for directory in runs.values():
        if not (directory / "metrics.jsonl").is_file():
            raise ConfigError(f"diagnose_runs: {directory} holds no metrics.jsonl")
    _check_sampling(config)
    # Plain strings or conversations: `sample_policy` renders them with the chat template.
    prompts = [e.prompt for e in load_prompts(config.prompts)]
    if not prompts:
        raise ConfigError(f"prompts: {config.prompts} holds no prompts")
    run = Run(config, "eval")
    if config.max_prompt_length:
        from rlhfkit.data.tokenize import encode_prompts
        from rlhfkit.models.loading import load_tokenizer

        _, cut = encode_prompts(load_tokenizer(reference), prompts, config.max_prompt_length)
        if cut:
            run.print(
                f"[yellow]{cut} prompts longer than max_prompt_length={config.max_prompt_length} "
                "tokens lose their start[/]"
            )
    evaluation = evaluate_against_reference(
        named,
        reference=reference,
        reference_name=reference_name or "reference",
        prompts=prompts,
        proxy=(
            load_reward_function(config.reward_model, dtype=config.dtype)
            if config.reward_model
            else None
        ),
        gold=load_reward_function(config.gold_reward) if config.gold_reward else None,
        best_of=config.best_of_n,
        max_new_tokens=config.max_new_tokens,
        seed=config.seed,
        temperature=config.temperature,
        top_p=config.top_p,
        device=run.accelerator.device,
        dtype="float32" if config.dtype == "auto" else config.dtype,
        max_prompt_length=config.max_prompt_length,
    )
    if runs:
        evaluation["curves"], warnings = training_diagnostics(runs)
        evaluation["warnings"] = warnings + evaluation["warnings"]
    write_json(run.out / "eval.json", evaluation)
    for warning in evaluation["warnings"]:
        run.print(f"[yellow]warning[/]: {warning['message']}")
    summary = {
        name: {k: v for k, v in numbers.items() if isinstance(v, (int, float))}
        for name, numbers in evaluation["policies"].items()
    }
    run.summary(summary)
    for name, numbers in summary.items():
        run.print(name, {k: round(v, 4) for k, v in numbers.items()})
    return summary


# (predicate on the config, mode function); the first whose predicate holds runs.
MODES: list[tuple[Callable[[EvalConfig], bool], Callable[[EvalConfig], dict]]] = [
    (lambda c: bool(c.policies), evaluate_policies),
    (lambda c: bool(c.reward_model and c.data), score_data),
]


def written_files(config: EvalConfig) -> list[Path]:
    """The file this config writes outside output_dir, if any (see `Stage.writes`)."""
    return [Path(config.output)] if config.output else []


def run(config: EvalConfig) -> dict:
    for wanted, mode in MODES:
        if wanted(config):
            return mode(config)
    raise ConfigError(
        "eval: nothing to do; score data with `rlhfkit eval reward_model=DIR data=FILE`, or "
        "evaluate policies with `policies=DIR,... reference=DIR prompts=FILE` (see --help)"
    )
