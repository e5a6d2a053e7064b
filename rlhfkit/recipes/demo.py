"""`rlhfkit demo`: the embedded world end to end, on a laptop CPU, with a known truth.

Stages (each writes under `output_dir`, default `runs/demo`):

1. world     — the SFT corpus (behaviour mix + Constitutional-AI demonstrations) and prompt splits;
2. base      — a random `tiny` Llama + byte tokenizer (`init-model`);
3. sft       — supervised fine-tuning on the corpus;
4. spread    — 256 samples of the SFT policy scored by the gold reward (mean/std/min/max);
5. pairs     — two responses per training prompt from the SFT policy (`generate`'s format);
6. labels    — simulated annotators rank the pairs (Bradley-Terry noise, diverse values),
               giving the preference dataset and the annotators' agreement ceiling.

Later stages (reward model, PPO, DPO, evaluation, report) are added by the pipeline issues.
"""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.table import Table

from rlhfkit.config import option
from rlhfkit.data.io import write_json, write_jsonl
from rlhfkit.training.run import console


@dataclass
class DemoConfig:
    output_dir: str = option("runs/demo", "where every stage of the demo writes")
    seed: int = option(0, "seed of the world, the models and the sampling")
    quick: bool = option(False, "a smaller, faster run (fewer steps and samples)")
    corpus_size: int = option(6000, "SFT corpus records (behaviour mix + CAI demonstrations)")
    sft_steps: int = option(300, "SFT optimizer steps (quick: 120)")
    sft_batch_size: int = option(32, "SFT batch size")
    sft_learning_rate: float = option(3e-3, "SFT peak learning rate")
    pair_prompts: int = option(
        1024, "training prompts answered twice for preference pairs (quick: 384)"
    )
    eval_prompts: int = option(256, "held-out prompts for measuring policies")
    max_new_tokens: int = option(48, "maximum tokens per sampled response")
    threads: int = option(0, "torch CPU threads; 0 = torch's default")
    progress: bool = option(True, "show progress bars")


@dataclass
class DemoPaths:
    root: Path

    def __getattr__(self, name: str) -> Path:  # root / name, for readability below
        return self.root / name


def _scale(config: DemoConfig) -> DemoConfig:
    if config.quick:
        config.sft_steps = min(config.sft_steps, 120)
        config.pair_prompts = min(config.pair_prompts, 384)
        config.corpus_size = min(config.corpus_size, 4000)
    return config


def build_world(config: DemoConfig, out: Path) -> dict:
    """Write the SFT corpus and the prompt splits of the embedded world."""
    from rlhfkit.synthetic import make_prompts, sft_corpus

    out.mkdir(parents=True, exist_ok=True)
    corpus = sft_corpus(config.corpus_size, seed=config.seed)
    write_jsonl(out / "sft.jsonl", corpus)
    train_prompts = make_prompts(config.pair_prompts, seed=config.seed + 1)
    eval_prompts = make_prompts(config.eval_prompts, seed=config.seed + 2)
    write_jsonl(out / "prompts_train.jsonl", [{"prompt": p.text} for p in train_prompts])
    write_jsonl(out / "prompts_eval.jsonl", [{"prompt": p.text} for p in eval_prompts])
    return {
        "corpus": len(corpus),
        "train_prompts": len(train_prompts),
        "eval_prompts": len(eval_prompts),
    }


def sample_policy(
    model_dir: Path,
    prompts: list[str],
    *,
    n: int,
    max_new_tokens: int,
    seed: int,
    temperature: float = 1.0,
) -> list[list[str]]:
    """`n` sampled responses per prompt from a saved policy (decoded text, EOS stripped)."""
    from rlhfkit.models.loading import load_causal_lm, load_tokenizer
    from rlhfkit.rollout.sampling import SamplingParams, sample_responses

    tokenizer = load_tokenizer(str(model_dir))
    model = load_causal_lm(str(model_dir), dtype="float32", trainable=False)
    ids = [tokenizer(p, add_special_tokens=False).input_ids for p in prompts]
    samples = sample_responses(
        model, ids, SamplingParams(max_new_tokens, temperature, 1.0),
        pad_id=tokenizer.pad_token_id, eos_id=tokenizer.eos_token_id, num_samples=n,
        batch_size=128, seed=seed,
    )  # fmt: skip
    out: list[list[str]] = [[] for _ in prompts]
    for index, response in zip(samples.prompt_index, samples.response_ids, strict=True):
        out[index].append(tokenizer.decode(response, skip_special_tokens=True))
    return out


def gold_spread(prompts: list[str], responses: list[list[str]]) -> dict:
    """Mean, std, min, max of the gold reward over every sampled response."""
    from rlhfkit.synthetic import gold_reward

    scores = [gold_reward(p, r) for p, rs in zip(prompts, responses, strict=True) for r in rs]
    return {
        "n": len(scores),
        "mean": statistics.fmean(scores),
        "std": statistics.pstdev(scores),
        "min": min(scores),
        "max": max(scores),
    }


def label_preferences(config: DemoConfig, pairs: list[dict], out: Path) -> dict:
    """Simulated annotators label the pairs through the annotation server's API (in process: the
    same code path as people labelling in the web page); a held-out tenth of the pairs measures
    reward models later against the annotators' agreement ceiling."""
    from rlhfkit.feedback.annotation.simulated import label_with_simulated_annotators
    from rlhfkit.synthetic import agreement_ceiling, default_annotators

    annotators = default_annotators()
    distinct = [p for p in pairs if p["responses"][0] != p["responses"][1]]
    random.Random(config.seed).shuffle(distinct)
    held_out = max(len(distinct) // 10, 1)
    db_path = out / "labels.db"
    if db_path.exists():
        db_path.unlink()
    records = label_with_simulated_annotators(
        distinct, annotators, overlap=1, seed=config.seed, db_url=f"sqlite:///{db_path}"
    )
    eval_prompts = {(p["prompt"], frozenset(p["responses"])) for p in distinct[:held_out]}
    is_eval = [
        (r["prompt"], frozenset((r["chosen"], r["rejected"]))) in eval_prompts for r in records
    ]
    write_jsonl(
        out / "preferences_train.jsonl", [r for r, e in zip(records, is_eval, strict=True) if not e]
    )
    write_jsonl(
        out / "preferences_eval.jsonl", [r for r, e in zip(records, is_eval, strict=True) if e]
    )
    ceiling = agreement_ceiling(
        [(p["prompt"], p["responses"][0], p["responses"][1]) for p in distinct[:held_out]],
        annotators,
    )
    return {
        "pairs": len(pairs),
        "skipped_identical": len(pairs) - len(distinct),
        "ties": len(distinct) - len(records),
        "train": len(records) - sum(is_eval),
        "eval": sum(is_eval),
        "annotator_agreement": ceiling,
        "database": str(db_path),
    }


def run(config: DemoConfig) -> int:
    from rlhfkit.recipes.init_model import InitModelConfig
    from rlhfkit.recipes.init_model import run as init_model
    from rlhfkit.recipes.sft import SFTConfig, SFTOptions
    from rlhfkit.recipes.sft import train as train_sft

    config = _scale(config)
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    paths = DemoPaths(Path(config.output_dir))
    paths.root.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    summary: dict = {"seed": config.seed, "quick": config.quick}

    def stage(name: str):
        console.rule(f"[bold]{name}")
        timings[name] = time.perf_counter()

    def done(name: str) -> None:
        timings[name] = time.perf_counter() - timings[name]

    stage("world")
    summary["world"] = build_world(config, paths.world)
    done("world")

    stage("base model")
    init_model(InitModelConfig(preset="tiny", out=str(paths.base), seed=config.seed))
    done("base model")

    stage("sft")
    sft_summary = train_sft(
        SFTConfig(
            model=str(paths.base),
            train_data=str(paths.world / "sft.jsonl"),
            output_dir=str(paths.sft),
            seed=config.seed,
            max_steps=config.sft_steps,
            batch_size=config.sft_batch_size,
            learning_rate=config.sft_learning_rate,
            warmup_ratio=0.05,
            max_length=256,
            sft=SFTOptions(packing=True),
            logging_steps=20,
            progress=config.progress,
            dtype="float32",
        )  # fmt: skip
    )
    summary["sft_train_loss"] = sft_summary["train_loss"]
    done("sft")

    stage("sft samples: gold-reward spread")
    eval_prompts = [r["prompt"] for r in _read(paths.world / "prompts_eval.jsonl")]
    sft_samples = sample_policy(paths.sft / "model", eval_prompts, n=1,
                                max_new_tokens=config.max_new_tokens, seed=config.seed)  # fmt: skip
    summary["sft_gold_spread"] = gold_spread(eval_prompts, sft_samples)
    done("sft samples: gold-reward spread")

    stage("pairs")
    train_prompts = [r["prompt"] for r in _read(paths.world / "prompts_train.jsonl")]
    responses = sample_policy(
        paths.sft / "model", train_prompts, n=2, max_new_tokens=config.max_new_tokens,
        seed=config.seed + 1,
    )  # fmt: skip
    pairs = [{"prompt": p, "responses": rs} for p, rs in zip(train_prompts, responses, strict=True)]
    write_jsonl(paths.root / "pairs.jsonl", pairs)
    done("pairs")

    stage("simulated annotators")
    summary["labels"] = label_preferences(config, pairs, paths.root)
    summary["annotator_agreement"] = summary["labels"]["annotator_agreement"]
    done("simulated annotators")

    summary["timings_s"] = {k: round(v, 1) for k, v in timings.items()}
    write_json(paths.root / "summary.json", summary)
    _print_table(summary, paths)
    return 0


def _read(path: Path) -> list[dict]:
    import json

    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _print_table(summary: dict, paths: DemoPaths) -> None:
    spread = summary["sft_gold_spread"]
    labels = summary["labels"]
    table = Table(title="rlhfkit demo — the embedded world")
    table.add_column("stage")
    table.add_column("result")
    table.add_column("time", justify="right")
    t = summary["timings_s"]
    table.add_row(
        "world",
        f"{summary['world']['corpus']} SFT records, "
        f"{summary['world']['train_prompts']} + {summary['world']['eval_prompts']} prompts",
        f"{t['world']}s",
    )
    table.add_row(
        "sft", f"train loss {summary['sft_train_loss']:.3f} → {paths.sft / 'model'}", f"{t['sft']}s"
    )
    table.add_row(
        "sft gold reward",
        f"mean {spread['mean']:.3f}  std {spread['std']:.3f}  min {spread['min']:.3f}  "
        f"max {spread['max']:.3f}  (n={spread['n']})",
        f"{t['sft samples: gold-reward spread']}s",
    )
    table.add_row(
        "pairs", f"{labels['pairs']} pairs → {paths.root / 'pairs.jsonl'}", f"{t['pairs']}s"
    )
    table.add_row(
        "preferences",
        f"{labels['train']} train + {labels['eval']} held-out → "
        f"{paths.root / 'preferences_train.jsonl'}"
        f" ({labels['skipped_identical']} identical pairs skipped, {labels['ties']} ties); "
        "annotator agreement ceiling "
        f"{labels['annotator_agreement']:.3f}",
        f"{t['simulated annotators']}s",
    )
    console.print(table)
