"""A byte-level tokenizer built in code, so tests, the demo and benchmarks need no download.

Every UTF-8 string encodes (one token per byte, GPT-2's byte-to-unicode alphabet, no merges);
pad and eos are distinct special tokens; a ChatML chat template renders conversations. The
result is a plain `PreTrainedTokenizerFast`: `save_pretrained` writes `tokenizer.json` and
`AutoTokenizer.from_pretrained(DIR)` loads it back, exactly like a hub tokenizer.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

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


def build_byte_tokenizer(model_max_length: int = 2048) -> PreTrainedTokenizerFast:
    """Build the byte-level tokenizer: ids 0..2 are pad, eos, chat-start; ids 3..258 are bytes."""
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for char in _byte_alphabet():
        vocab[char] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], fuse_unk=False))
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
