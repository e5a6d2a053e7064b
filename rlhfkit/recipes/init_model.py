"""`rlhfkit init-model --preset tiny --out DIR`: a random model + byte tokenizer, for tests and
benchmarks (no download)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from rlhfkit.config import option
from rlhfkit.models.presets import PRESETS, build_preset
from rlhfkit.training.checkpoint import replace_dir_atomically


@dataclass
class InitModelConfig:
    preset: str = option("tiny", f"model shape: {', '.join(PRESETS)}")
    out: str = option("", "directory to write (save_pretrained + tokenizer)")
    seed: int = option(0, "seed of the random initialisation")


def run(config: InitModelConfig) -> int:
    from rlhfkit.errors import ConfigError

    if not config.out:
        raise ConfigError("out: give the directory to write (--out DIR)")
    model, tokenizer = build_preset(config.preset, seed=config.seed)
    out = Path(config.out)
    tmp = out.with_name(f".tmp-{out.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    replace_dir_atomically(tmp, out)
    params = sum(p.numel() for p in model.parameters())
    print(f"wrote {config.preset} ({params / 1e6:.1f}M parameters) to {out}")
    return 0
