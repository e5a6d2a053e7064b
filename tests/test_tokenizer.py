"""The byte tokenizer and the byte-level BPE tokenizer learned from a corpus (`learn_byte_bpe`)."""

from __future__ import annotations

import pytest

from rlhfkit.errors import ConfigError
from rlhfkit.models.tokenizer import BYTE_VOCAB_SIZE, build_byte_tokenizer, learn_byte_bpe

CORPUS = [
    "User: What is 12+7?\nBot: Sure! 12+7 is 19.",
    "User: Name a fruit.\nBot: Sure, how about apple?",
    "User: Name a color.\nBot: Sure, how about red?",
    "User: What is 3+4?\nBot: Sure! 3+4 is 7.",
] * 20


def test_merges_are_learned_from_the_corpus_and_shorten_its_text():
    """Frequent words of the corpus become single tokens, so its text takes fewer ids than
    bytes; the vocabulary holds 3 special + 256 byte ids + the merges, at most `vocab_size`."""
    tokenizer = learn_byte_bpe(CORPUS, vocab_size=300)
    assert BYTE_VOCAB_SIZE < len(tokenizer) <= 300
    text = CORPUS[1]
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) < len(text.encode()) / 2
    assert "ĠSure" in tokenizer.tokenize(text)  # a whole word with its leading space


def test_learned_tokenizer_keeps_the_byte_ids_and_encodes_any_text():
    """Ids 0-258 mean what they mean in the byte tokenizer (special tokens, then the bytes);
    text the corpus never showed (accents, emoji, CJK, tabs) still round-trips, through bytes."""
    tokenizer = learn_byte_bpe(CORPUS, vocab_size=300)
    plain = build_byte_tokenizer()
    for token, index in plain.get_vocab().items():
        assert tokenizer.convert_tokens_to_ids(token) == index
    for text in ("héllo ✓ 日本 <script>", "a\tb\n\n  c", "😀 42 is 6*7", ""):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids) == text
    assert tokenizer.pad_token_id == plain.pad_token_id != tokenizer.eos_token_id
    assert tokenizer.chat_template == plain.chat_template


def test_numbers_are_spelt_digit_by_digit():
    """However often "12" or "19" appears, no merge joins two digits or a digit and a space, so
    every number reads the same way wherever it stands (the world's sums depend on it)."""
    tokenizer = learn_byte_bpe(CORPUS, vocab_size=400)
    assert tokenizer.tokenize(" 12+7 is 19.") == [
        "Ġ",
        "1",
        "2",
        "+",
        "7",
        "Ġis",
        "Ġ",
        "1",
        "9",
        ".",
    ]


def test_learning_is_deterministic_and_byte_size_means_no_merges():
    first = learn_byte_bpe(CORPUS, vocab_size=300)
    assert first.get_vocab() == learn_byte_bpe(CORPUS, vocab_size=300).get_vocab()
    plain = learn_byte_bpe(CORPUS, vocab_size=BYTE_VOCAB_SIZE)
    assert len(plain) == BYTE_VOCAB_SIZE
    assert len(plain(CORPUS[0], add_special_tokens=False)["input_ids"]) == len(CORPUS[0].encode())
    with pytest.raises(ConfigError, match="tokenizer_vocab: 100 is fewer than the 259"):
        learn_byte_bpe(CORPUS, vocab_size=100)


def test_save_and_load_round_trip(tmp_path):
    from transformers import AutoTokenizer

    tokenizer = learn_byte_bpe(CORPUS, vocab_size=300)
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    for text in CORPUS[:4] + ["héllo 😀"]:
        assert loaded(text)["input_ids"] == tokenizer(text)["input_ids"]
