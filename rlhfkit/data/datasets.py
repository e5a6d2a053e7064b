"""From a data spec to validated, tokenised examples for each stage (with their TokenStats)."""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

from rlhfkit.data.formats import (
    PreferenceExample,
    PromptExample,
    RankingExample,
    parse_comparisons,
    parse_prompt,
    parse_sft,
)
from rlhfkit.data.io import read_records
from rlhfkit.data.tokenize import Encoded, TokenStats, encode_example


def load_sft(
    spec: str, tokenizer: PreTrainedTokenizerBase, *, max_length: int, max_prompt_length: int
) -> tuple[list[Encoded], TokenStats]:
    """Every SFT record of `spec`, tokenised; invalid records raise, skipped ones are counted."""
    stats = TokenStats()
    rows = []
    for record in read_records(spec):
        example = parse_sft(record)
        encoded = encode_example(
            tokenizer,
            example.prompt,
            example.completion,
            max_length=max_length,
            max_prompt_length=max_prompt_length,
            stats=stats,
        )
        if encoded is not None:
            rows.append(encoded)
    return rows, stats


def load_prompts(spec: str) -> list[PromptExample]:
    return [parse_prompt(record) for record in read_records(spec)]


def load_comparisons(spec: str) -> list[PreferenceExample | RankingExample]:
    """Preference and ranking records, validated (tokenisation is the stage's business)."""
    return parse_comparisons(read_records(spec))
