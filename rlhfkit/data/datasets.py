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
from rlhfkit.data.io import Record, read_records
from rlhfkit.data.tokenize import Encoded, TokenStats, encode_example
from rlhfkit.errors import DataError


def read_nonempty(spec: str) -> list[Record]:
    """The records of `spec`; a file (or dataset) without any is an error, `spec: no records`,
    rather than a run that trains on nothing or fails later with a vaguer message."""
    records = read_records(spec)
    if not records:
        raise DataError(spec, None, None, "no records")
    return records


def load_sft(
    spec: str, tokenizer: PreTrainedTokenizerBase, *, max_length: int, max_prompt_length: int
) -> tuple[list[Encoded], TokenStats]:
    """Every SFT record of `spec`, tokenised; invalid records raise, skipped ones are counted."""
    stats = TokenStats()
    rows = []
    for record in read_nonempty(spec):
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
    """Every prompt record of `spec`, validated."""
    return [parse_prompt(record) for record in read_nonempty(spec)]


def load_comparisons(spec: str) -> list[PreferenceExample | RankingExample]:
    """Preference and ranking records, validated (tokenisation is the stage's business)."""
    return parse_comparisons(read_nonempty(spec))
