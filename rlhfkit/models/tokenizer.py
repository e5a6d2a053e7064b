"""A byte-level tokenizer built in code, so tests, the demo and benchmarks need no download.

Every UTF-8 string encodes (GPT-2's byte-to-unicode alphabet); pad and eos are distinct special
tokens; a ChatML chat template renders conversations. The result is a plain
`PreTrainedTokenizerFast`: `save_pretrained` writes `tokenizer.json` and
`AutoTokenizer.from_pretrained(DIR)` loads it back, exactly like a hub tokenizer.

Two forms share one id layout (ids 0-2 special, 3-258 the bytes):

* `build_byte_tokenizer()`: one token per byte, no merges (259 ids);
* `learn_byte_bpe(texts, vocab_size)`: byte-level BPE whose merges are learned from a corpus
  (ids 259 and up, in merge order), as real models' tokenizers are. Text is first split into
  words (GPT-2's pattern: a word keeps its leading space) and single digits, so a merge never
  spans two words and every number is spelt digit by digit. On the embedded world's corpus 512
  ids cut the tokens per text by ~2.5x against bytes; a model reads each prompt in fewer,
  more meaningful tokens (`docs/demo.md` measures what that does to the tiny model).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from rlhfkit.errors import ConfigError

PAD_TOKEN = "<|pad|>"
EOS_TOKEN = "<|im_end|>"
BOS_CHAT_TOKEN = "<|im_start|>"
SPECIAL_TOKENS = (PAD_TOKEN, EOS_TOKEN, BOS_CHAT_TOKEN)

# ChatML, as Qwen2 uses it: each turn is "<|im_start|>role\ncontent<|im_end|>\n".
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _byte_alphabet() -> list[str]:
    """The 256 printable characters standing for bytes 0..255 (GPT-2's reversible mapping)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


BYTE_VOCAB_SIZE = len(SPECIAL_TOKENS) + 256


def _word_splitter() -> pre_tokenizers.PreTokenizer:
    """Split text into single digits and GPT-2 words (leading space kept), then map to bytes."""
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )


def build_byte_tokenizer(
    model_max_length: int = 2048, merges: Sequence[tuple[str, str]] = ()
) -> PreTrainedTokenizerFast:
    """Build the byte-level tokenizer: ids 0..2 are pad, eos, chat-start; ids 3..258 are bytes;
    with `merges` (pairs of tokens, in the order they were learned), id 259 + i is the token
    merge i makes."""
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for char in _byte_alphabet():
        vocab[char] = len(vocab)
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    backend = Tokenizer(models.BPE(vocab=vocab, merges=list(merges), fuse_unk=False))
    if merges:
        backend.pre_tokenizer = _word_splitter()
    else:
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD_TOKEN,
        eos_token=EOS_TOKEN,
        additional_special_tokens=[BOS_CHAT_TOKEN],
        model_max_length=model_max_length,
        padding_side="right",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def learn_byte_bpe(
    texts: Iterable[str], vocab_size: int, model_max_length: int = 2048
) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer whose merges are learned from `texts`.

    Merges are added, most frequent pair first, until the vocabulary holds `vocab_size` ids
    (3 special + 256 bytes + merges) or no pair occurs twice; the result is deterministic for
    the same texts. `vocab_size == 259` gives the plain byte tokenizer.
    """
    if vocab_size < BYTE_VOCAB_SIZE:
        raise ConfigError(
            f"tokenizer_vocab: {vocab_size} is fewer than the {BYTE_VOCAB_SIZE} ids of the "
            "special tokens and the 256 bytes"
        )
    if vocab_size == BYTE_VOCAB_SIZE:
        return build_byte_tokenizer(model_max_length)
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = _word_splitter()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=_byte_alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer)
    learned = json.loads(backend.to_str())["model"]["merges"]
    # tokenizers writes a merge as [left, right] (or "left right" in versions before 0.20).
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in learned]
    return build_byte_tokenizer(model_max_length, merges=merges)
