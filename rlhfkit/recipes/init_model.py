"""`rlhfkit init-model --preset tiny --out DIR`: a random model + byte tokenizer, for tests and
benchmarks (no download).

With `tokenizer_corpus=DATA` the tokenizer is byte-level BPE with merges learned from DATA (any
SFT format: its prompts and completions; `tokenizer_vocab` ids in all), and the model's
vocabulary widens to hold them; the embedded-world demo builds its base model this way.

DIR is replaced atomically, and only when nothing of value can be in it: it must be missing,
empty, or a model directory that init-model wrote (its marker `MARKER` beside nothing but the
files a model and tokenizer are saved as, and the bookkeeping `rlhfkit pipeline` keeps there).
Anything else (a user's files, a run's output directory, a trained model) is refused unless
`overwrite=true`. The current directory, or one holding it, is never replaced.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

import yaml

from rlhfkit.atomic_dirs import blocking_file, holds_working_directory, replace_dir_atomically
from rlhfkit.config import SEED_RANGE, option
from rlhfkit.data.datasets import read_nonempty
from rlhfkit.data.formats import parse_sft
from rlhfkit.errors import ConfigError
from rlhfkit.models.presets import PRESETS, build_preset
from rlhfkit.models.tokenizer import learn_byte_bpe

MARKER = "rlhfkit_init_model.json"  # written beside the model: {"preset", "seed"}
# What `save_pretrained` writes for a model and its tokenizer (sharded weights included).
MODEL_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "model-*-of-*.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
)
PIPELINE_FILES = (".pipeline.json", ".pipeline.json.tmp")  # `rlhfkit pipeline`'s stage marker


@dataclass
class InitModelConfig:
    preset: str = option("tiny", f"model shape: {', '.join(PRESETS)}")
    out: str = option(
        "",
        "directory to write (save_pretrained + tokenizer); must be missing, empty or a model "
        "directory init-model wrote, unless overwrite=true",
    )
    seed: int = option(0, "seed of the random initialisation", **SEED_RANGE)
    tokenizer_corpus: str = option(
        "",
        "SFT data (a file or hub dataset, any SFT format) to learn the tokenizer's byte-pair "
        "merges from (its prompts and completions); empty = one token per byte, no merges",
    )
    tokenizer_vocab: int = option(
        512,
        "ids of the learned tokenizer: 3 special + 256 bytes + merges (fewer if the corpus runs "
        "out of pairs seen twice); used only with tokenizer_corpus",
        minimum=259,
    )
    overwrite: bool = option(False, "replace `out` even if it holds other files (they are deleted)")


def run(config: InitModelConfig) -> int:
    if not config.out:
        raise ConfigError("out: give the directory to write (--out DIR)")
    out = Path(config.out).expanduser().resolve()
    check_target(out, overwrite=config.overwrite)
    if (blocking := blocking_file(out.parent)) is not None:  # before the model is built
        raise ConfigError(f"out: {blocking} is a file, so {out} cannot be made")
    tokenizer = None
    if config.tokenizer_corpus:
        tokenizer = learn_byte_bpe(corpus_texts(config.tokenizer_corpus), config.tokenizer_vocab)
    model, tokenizer = build_preset(config.preset, seed=config.seed, tokenizer=tokenizer)
    tmp = out.with_name(f".tmp-{out.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    marker = {"preset": config.preset, "seed": config.seed}
    if config.tokenizer_corpus:
        marker.update(tokenizer_corpus=config.tokenizer_corpus, tokenizer_vocab=len(tokenizer))
    (tmp / MARKER).write_text(json.dumps(marker) + "\n")
    replace_dir_atomically(tmp, out)
    params = sum(p.numel() for p in model.parameters())
    merges = f", a {len(tokenizer)}-id learned tokenizer" if config.tokenizer_corpus else ""
    print(f"wrote {config.preset} ({params / 1e6:.1f}M parameters{merges}) to {config.out}")
    return 0


def corpus_texts(spec: str) -> list[str]:
    """The texts of SFT data `spec` a tokenizer learns from: prompt + completion of each record,
    or each message's content for conversations (the chat template's own tokens are special)."""
    texts = []
    for record in read_nonempty(spec):
        example = parse_sft(record)
        for text in (example.prompt, example.completion):
            if isinstance(text, str):
                texts.append(text)
            else:
                texts.extend(message["content"] for message in text)
    return texts


def check_target(out: Path, *, overwrite: bool) -> None:
    """Raise a one-line `ConfigError` unless init-model may replace the resolved path `out`."""
    if holds_working_directory(out):
        raise ConfigError(f"out: {out} is the current directory or holds it; give a subdirectory")
    if not out.exists():
        return
    if not out.is_dir():
        raise ConfigError(f"out: {out} is a file, not a directory")
    if overwrite:
        return
    foreign = foreign_entries(out)
    if foreign:
        shown = ", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else "")
        raise ConfigError(
            f"out: {out} is not empty and not a model init-model wrote (it holds {shown}); "
            "give another directory, or overwrite=true to delete what it holds"
        )


def foreign_entries(directory: Path) -> list[str]:
    """The entries of `directory` that init-model would not have written there, sorted (empty =
    it may be replaced): all of them when init-model's marker is missing. The pipeline's stage
    marker does not count (the pipeline writes it before the stage runs)."""
    names = sorted(entry.name for entry in directory.iterdir() if entry.name not in PIPELINE_FILES)
    if names and MARKER not in names:
        return names
    return [
        name for name in names if not (directory / name).is_file() or not _ours(directory, name)
    ]


def _ours(directory: Path, name: str) -> bool:
    """Whether file `name` is one init-model writes, or the config.yaml `rlhfkit pipeline`
    writes for an init-model stage."""
    if name == MARKER:
        return True
    if any(fnmatch(name, pattern) for pattern in MODEL_FILES):
        return True
    return name == "config.yaml" and _yaml_stage(directory / name) == "init-model"


def _yaml_stage(path: Path) -> str | None:
    """The `stage` a config.yaml names, or None where it names none or cannot be read."""
    try:
        loaded = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return None
    return loaded.get("stage") if isinstance(loaded, dict) else None
