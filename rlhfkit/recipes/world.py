"""`rlhfkit world output_dir=DIR`: write the embedded world's data, the first stage of a pipeline.

Writes, under ``output_dir``:

* ``sft.jsonl`` -- the SFT corpus (`rlhfkit.synthetic.sft_corpus`: the behaviour mix of good and
  bad responses plus Constitutional-AI demonstrations), ``{"prompt", "completion", ...}``;
* ``prompts_train.jsonl`` -- prompts to sample preference pairs and PPO rollouts on;
* ``prompts_eval.jsonl`` -- held-out prompts to measure policies on;
* ``summary.json`` (the counts) and ``config.yaml``.

The gold reward that judges responses to these prompts is
``python:rlhfkit.synthetic.gold:gold_rewards`` (for ``ppo.gold_reward`` and ``eval``'s
``gold_reward``), and ``rlhfkit label judge=simulated`` labels pairs with the world's simulated
annotators. `examples/embedded_world.yaml` chains these into the whole pipeline; `rlhfkit demo`
runs the same world with more stages and a final table.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rlhfkit.config import SEED_RANGE, option, write_config
from rlhfkit.data.io import write_json, write_jsonl
from rlhfkit.errors import ConfigError
from rlhfkit.training.run import check_output_stage, console


@dataclass
class WorldConfig:
    """The embedded world's SFT corpus and prompt splits, written as JSONL files."""

    output_dir: str = option("runs/world", "where the corpus and the prompt files go")
    seed: int = option(
        0, "seed of the corpus (prompt splits use seed + 1 and seed + 2)", **SEED_RANGE
    )
    corpus_size: int = option(20000, "SFT records (behaviour mix + CAI demonstrations)", minimum=1)
    cai_fraction: float = option(
        0.2, "share of Constitutional-AI demonstrations in the corpus", minimum=0,
        exclusive_maximum=1,
    )  # fmt: skip
    train_prompts: int = option(1024, "prompts in prompts_train.jsonl", minimum=1)
    eval_prompts: int = option(256, "prompts in prompts_eval.jsonl", minimum=1)


def write_world(
    out: Path,
    *,
    seed: int,
    corpus_size: int,
    train_prompts: int,
    eval_prompts: int,
    cai_fraction: float = 0.2,
) -> dict[str, int]:
    """Write the corpus and both prompt splits under `out`; return their sizes."""
    from rlhfkit.synthetic import make_prompts, sft_corpus

    out.mkdir(parents=True, exist_ok=True)
    corpus = sft_corpus(corpus_size, seed=seed, cai_fraction=cai_fraction)
    write_jsonl(out / "sft.jsonl", corpus)
    splits = {"prompts_train": (train_prompts, seed + 1), "prompts_eval": (eval_prompts, seed + 2)}
    for name, (count, split_seed) in splits.items():
        prompts = make_prompts(count, seed=split_seed)
        write_jsonl(out / f"{name}.jsonl", [{"prompt": p.text} for p in prompts])
    return {"corpus": len(corpus), "train_prompts": train_prompts, "eval_prompts": eval_prompts}


def run(config: WorldConfig) -> int:
    out = Path(config.output_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output_dir: {out} is a file, not a directory")
    check_output_stage(out, "world")  # another stage's run there is not replaced
    write_config(out, "world", config)
    sizes = write_world(
        out,
        seed=config.seed,
        corpus_size=config.corpus_size,
        train_prompts=config.train_prompts,
        eval_prompts=config.eval_prompts,
        cai_fraction=config.cai_fraction,
    )
    write_json(out / "summary.json", sizes)
    console.print(
        f"[green]world[/]: {sizes['corpus']} SFT records, {sizes['train_prompts']} training and "
        f"{sizes['eval_prompts']} held-out prompts → {out}"
    )
    return 0
