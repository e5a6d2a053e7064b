"""`rlhfkit generate model=DIR prompts=FILE n=K output=FILE.jsonl`: K sampled responses per
prompt, written as `{"prompt", "responses": [...]}` — the input of annotation and ranking."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rlhfkit.config import BaseConfig, SamplingOptions, option
from rlhfkit.data.datasets import load_prompts
from rlhfkit.data.io import check_output_file, write_jsonl
from rlhfkit.data.tokenize import encode_prompts
from rlhfkit.errors import ConfigError
from rlhfkit.models.loading import check_sampling_context, load_causal_lm, load_tokenizer
from rlhfkit.rollout.sampling import SamplingParams, end_ids, sample_responses
from rlhfkit.training.run import console


@dataclass
class GenerateConfig(BaseConfig, SamplingOptions):
    prompts: str = option("", "prompt data ({prompt} records; any supported format)")
    n: int = option(2, "responses per prompt (2 = pairs; more = a ranking task)", minimum=1)
    output: str = option("", "output JSONL file")
    batch_size: int = option(64, "rows sampled together", minimum=1)
    max_prompt_length: int = option(256, "longer prompts lose their start", minimum=1)
    output_dir: str = option("runs/generate", "unused by this stage; kept for pipelines")
    progress: bool = option(True, "show a progress bar")


def written_files(config: GenerateConfig) -> list[Path]:
    """The file this config writes (see `Stage.writes`)."""
    return [Path(config.output)] if config.output else []


def run(config: GenerateConfig) -> int:
    if not config.prompts:
        raise ConfigError("prompts: give a prompt file (prompts=FILE)")
    if not config.output:
        raise ConfigError("output: give the output JSONL file (output=FILE.jsonl)")
    if config.n < 1:
        raise ConfigError("n: must be at least 1")
    check_output_file(config.output, "output", {"prompts": config.prompts})
    tokenizer = load_tokenizer(config.model)
    examples = load_prompts(config.prompts)
    ids, cut = encode_prompts(tokenizer, [e.prompt for e in examples], config.max_prompt_length)
    if cut:
        console.print(
            f"[yellow]{cut} prompts longer than max_prompt_length={config.max_prompt_length} "
            "tokens lose their start[/]"
        )
    check_sampling_context(config.model, ids, config.max_new_tokens)
    model = load_causal_lm(config.model, dtype=config.dtype, trainable=False)
    params = SamplingParams(config.max_new_tokens, config.temperature, config.top_p)
    from rich.progress import Progress

    with Progress(console=console, disable=not config.progress) as progress:
        task = progress.add_task("generate", total=len(ids) * config.n)
        samples = sample_responses(
            model,
            ids,
            params,
            pad_id=tokenizer.pad_token_id,
            eos_ids=end_ids(model, tokenizer),
            num_samples=config.n,
            batch_size=config.batch_size,
            seed=config.seed,
            progress=lambda k: progress.update(task, advance=k),
        )
    rows = [{"prompt": e.prompt, "responses": []} for e in examples]
    for prompt_index, response in zip(samples.prompt_index, samples.response_ids, strict=True):
        rows[prompt_index]["responses"].append(tokenizer.decode(response, skip_special_tokens=True))
    write_jsonl(config.output, rows)
    unfinished = sum(not e for e in samples.has_eos)
    console.print(
        f"wrote {len(rows)} prompts x {config.n} responses to {config.output}"
        + (f" ({unfinished} responses hit max_new_tokens without EOS)" if unfinished else "")
    )
    return 0
