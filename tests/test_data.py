from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rlhfkit.data.collate import pack_examples
from rlhfkit.data.datasets import load_comparisons, load_sft
from rlhfkit.data.formats import PreferenceExample, RankingExample, parse_sft
from rlhfkit.data.io import Record, read_records
from rlhfkit.data.tokenize import TokenStats, encode_example, encode_prompts, truncate
from rlhfkit.errors import DataError
from rlhfkit.models.tokenizer import build_byte_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return build_byte_tokenizer()


def _write(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


# --- bad data: each gives its file:line error -------------------------------------------------


def test_malformed_jsonl_line_names_file_and_line(tmp_path, tokenizer):
    path = _write(tmp_path / "d.jsonl", ['{"prompt": "a", "completion": "b"}', '{"prompt": "a", '])
    with pytest.raises(DataError, match=r"d\.jsonl:2: invalid JSON"):
        load_sft(path, tokenizer, max_length=64, max_prompt_length=32)


def test_missing_field(tmp_path, tokenizer):
    path = _write(
        tmp_path / "d.jsonl", ['{"prompt": "a", "completion": "b"}', "", '{"prompt": "a"}']
    )
    with pytest.raises(
        DataError, match=r"d\.jsonl:3: completion: missing field \(record has: prompt\)"
    ):
        load_sft(path, tokenizer, max_length=64, max_prompt_length=32)
    # A null was "missing field (record has: completion, prompt)": missing, yet listed.
    path = _write(tmp_path / "n.jsonl", ['{"prompt": "a", "completion": null}'])
    with pytest.raises(DataError, match=r"n\.jsonl:1: completion: null \(record has: prompt\)"):
        load_sft(path, tokenizer, max_length=64, max_prompt_length=32)


def test_empty_completion(tmp_path, tokenizer):
    path = _write(tmp_path / "d.jsonl", ['{"prompt": "a", "completion": "  "}'])
    with pytest.raises(DataError, match=r"d\.jsonl:1: completion: empty text"):
        load_sft(path, tokenizer, max_length=64, max_prompt_length=32)


def test_wrong_type(tmp_path, tokenizer):
    path = _write(tmp_path / "d.jsonl", ['{"prompt": "a", "completion": 7}'])
    with pytest.raises(
        DataError, match=r"d\.jsonl:1: completion: expected a string or a list of messages, got int"
    ):
        load_sft(path, tokenizer, max_length=64, max_prompt_length=32)


def test_bad_message_role_and_non_object(tmp_path):
    path = _write(tmp_path / "p.jsonl", ["[1, 2]"])
    with pytest.raises(DataError, match=r"p\.jsonl:1: expected a JSON object, got list"):
        read_records(path)
    record = Record({"messages": [{"role": "robot", "content": "x"}]}, "m.jsonl", 4)
    with pytest.raises(DataError, match=r"m\.jsonl:4: messages\[0\]\.role: expected one of"):
        parse_sft(record)


def test_preference_errors(tmp_path):
    path = _write(
        tmp_path / "prefs.jsonl",
        [
            '{"prompt": "p", "chosen": "a", "rejected": "b", "margin": 1}',
            '{"prompt": "p", "chosen": "a", "rejected": "b", "margin": "big"}',
        ],
    )
    with pytest.raises(DataError, match=r"prefs\.jsonl:2: margin: expected a number"):
        load_comparisons(path)
    path = _write(
        tmp_path / "rank.jsonl",
        ['{"prompt": "p", "responses": ["a", "b", "c"], "ranking": [0, 0, 1]}'],
    )
    with pytest.raises(DataError, match=r"rank\.jsonl:1: ranking: expected a permutation of 0..2"):
        load_comparisons(path)


# --- formats -----------------------------------------------------------------------------------


def test_all_file_formats_give_the_same_records(tmp_path):
    rows = [{"prompt": "p1", "completion": "c1"}, {"prompt": "p2", "completion": "c2"}]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "d.json").write_text(json.dumps(rows))
    (tmp_path / "d.csv").write_text("prompt,completion\np1,c1\np2,c2\n")
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    for suffix, first_line in (("jsonl", 1), ("json", 1), ("csv", 2), ("parquet", 1)):
        records = read_records(str(tmp_path / f"d.{suffix}"))
        assert [r.data for r in records] == rows, suffix
        assert records[0].line == first_line


def test_a_byte_order_mark_is_not_part_of_the_first_field(tmp_path):
    """Excel's "CSV UTF-8" (and some editors' JSONL) start with U+FEFF; it used to stick to the
    first column's name ("missing field prompt (record has: \\ufeffprompt)")."""
    bom = "\ufeff"
    (tmp_path / "d.csv").write_text(bom + "prompt,completion\np1,c1\n", encoding="utf-8")
    (tmp_path / "d.jsonl").write_text(bom + '{"prompt": "p1", "completion": "c1"}\n')
    (tmp_path / "d.json").write_text(bom + '[{"prompt": "p1", "completion": "c1"}]')
    for suffix in ("csv", "jsonl", "json"):
        records = read_records(str(tmp_path / f"d.{suffix}"))
        assert [r.data for r in records] == [{"prompt": "p1", "completion": "c1"}], suffix


def test_csv_cells_are_json_only_where_a_field_holds_structure(tmp_path):
    """A completion that reads `[1, 2, 3]` or `{"a": 1}` is text; `responses` and `ranking`
    cells are JSON lists, and a conversation (a list of role messages) is one in any column."""
    (tmp_path / "d.csv").write_text(
        "prompt,completion\n"
        'p,"[1, 2, 3]"\n'
        'p,"{""a"": 1}"\n'
        'p,"[{""role"": ""assistant"", ""content"": ""x""}]"\n'
    )
    assert [r.data["completion"] for r in read_records(str(tmp_path / "d.csv"))] == [
        "[1, 2, 3]",
        '{"a": 1}',
        [{"role": "assistant", "content": "x"}],
    ]
    (tmp_path / "r.csv").write_text('prompt,responses,ranking\np,"[""a"", ""b""]","[1, 0]"\n')
    (record,) = read_records(str(tmp_path / "r.csv"))
    assert record.data == {"prompt": "p", "responses": ["a", "b"], "ranking": [1, 0]}


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="nope.jsonl: file not found"):
        read_records(str(tmp_path / "nope.jsonl"))


def test_conversational_sft_masks_everything_but_the_last_assistant_turn(tokenizer):
    record = Record(
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
        "f",
        1,
    )
    example = parse_sft(record)
    encoded = encode_example(
        tokenizer, example.prompt, example.completion, max_length=64, max_prompt_length=64
    )
    prompt_text = tokenizer.decode(encoded.prompt_ids)
    completion_text = tokenizer.decode(encoded.completion_ids)
    assert prompt_text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert completion_text == "yo<|im_end|>\n"


def test_conversational_completion_ends_with_eos_where_the_template_does_not(tmp_path):
    """Qwen2 *base* tokenizers end turns with <|im_end|> but stop sampling at <|endoftext|>.
    The byte tokenizer with its eos reassigned to a new <|endoftext|> token is that case: the
    completion must end `...<|im_end|>\n<|endoftext|>`, or SFT never teaches the model to stop."""
    qwen_base_like = build_byte_tokenizer()
    qwen_base_like.add_special_tokens({"eos_token": "<|endoftext|>"})
    eos = qwen_base_like.eos_token_id
    assert eos != qwen_base_like.convert_tokens_to_ids("<|im_end|>")
    path = _write(
        tmp_path / "chat.jsonl",
        [json.dumps({"messages": [{"role": "user", "content": "hi"},
                                  {"role": "assistant", "content": "yo"}]})],
    )  # fmt: skip
    (example,), stats = load_sft(path, qwen_base_like, max_length=64, max_prompt_length=64)
    assert stats.kept == 1
    assert example.completion_ids.count(eos) == 1 and example.completion_ids[-1] == eos
    assert qwen_base_like.decode(example.completion_ids) == "yo<|im_end|>\n<|endoftext|>"
    # A plain completion ends with the new eos too (appended once, as before).
    plain = encode_example(qwen_base_like, "Q:", " 7.", max_length=64, max_prompt_length=64)
    assert qwen_base_like.decode(plain.completion_ids) == " 7.<|endoftext|>"


def test_conversational_completion_holding_eos_is_left_as_rendered(tokenizer):
    """With eos == the template's <|im_end|> (the byte tokenizer, Qwen2-Instruct) the rendered
    turn already holds eos: nothing is appended (the turn ends with its newline)."""
    user, bot = {"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}
    encoded = encode_example(tokenizer, [user], [bot], max_length=64, max_prompt_length=64)
    assert tokenizer.decode(encoded.completion_ids) == "yo<|im_end|>\n"
    assert encoded.completion_ids.count(tokenizer.eos_token_id) == 1


def test_plain_completion_ends_with_eos(tokenizer):
    encoded = encode_example(tokenizer, "Q:", " 7.", max_length=64, max_prompt_length=64)
    assert encoded.completion_ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(encoded.prompt_ids + encoded.completion_ids) == "Q: 7.<|im_end|>"


def test_implicit_prompt_and_ranking(tmp_path):
    user = {"role": "user", "content": "q"}
    rows = [
        {
            "chosen": [user, {"role": "assistant", "content": "a"}],
            "rejected": [user, {"role": "assistant", "content": "b"}],
        },
        {"prompt": "p", "responses": ["x", "y", "z"], "ranking": [2, 0, 1]},
    ]
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pref, rank = load_comparisons(str(path))
    assert isinstance(pref, PreferenceExample) and pref.prompt == [user]
    assert pref.chosen == [{"role": "assistant", "content": "a"}]
    assert isinstance(rank, RankingExample) and rank.ranking == [2, 0, 1]


# --- truncation policy -------------------------------------------------------------------------


def test_truncation_prompt_left_completion_right():
    enc = truncate([1, 2, 3, 4, 5], [6, 7, 8, 9], max_length=6, max_prompt_length=3)
    assert enc.prompt_ids == [3, 4, 5]  # start of the prompt dropped
    assert enc.completion_ids == [6, 7, 8]  # end of the completion dropped
    assert enc.prompt_truncated and enc.completion_truncated


def test_truncation_counts_and_skips(tmp_path, tokenizer):
    path = _write(
        tmp_path / "d.jsonl",
        [
            json.dumps({"prompt": "x" * 10, "completion": "short"}),  # prompt truncated
            json.dumps({"prompt": "ab", "completion": "y" * 30}),  # completion truncated
            json.dumps({"prompt": "ab", "completion": "ok"}),  # untouched
        ],
    )
    rows, stats = load_sft(path, tokenizer, max_length=8, max_prompt_length=8)
    assert isinstance(stats, TokenStats)
    # Row 1: prompt cut to 8 tokens leaves no room: truncated, then skipped. Row 2: completion cut.
    counts = (stats.examples, stats.kept, stats.prompt_truncated, stats.completion_truncated)
    assert counts == (3, 2, 1, 2)
    assert stats.skipped == {
        "no completion token fits max_length": 1
    }  # the 8-token prompt left no room
    assert "1 skipped" in stats.summary()
    assert all(len(r.prompt_ids) + len(r.completion_ids) <= 8 for r in rows)


def test_packing_keeps_examples_whole_and_positions_restart():
    prompts, completions = [[1, 2], [3], [4, 5, 6]], [[7], [8, 9], [10]]
    rows = pack_examples(prompts, completions, block_size=6)
    assert sorted(len(r["input_ids"]) for r in rows) == [4, 6]  # first-fit, longest first
    tokens = sorted(t for r in rows for t in r["input_ids"])
    assert tokens == list(range(1, 11))
    for r in rows:
        assert r["position_ids"][0] == 0 and len(r["position_ids"]) == len(r["input_ids"])


def test_packing_masks_prompts_unless_told_to_train_on_every_token():
    """Rows: [4,5,6,10] then [1,2,7 | 3,8,9] (first-fit, longest first, block 6). Completion-only
    masks mark 10, 7, 8 and 9; with completion_only=False every token but each example's first
    is a target (the first has nothing before it in its example to predict it)."""
    prompts, completions = [[1, 2], [3], [4, 5, 6]], [[7], [8, 9], [10]]
    rows = pack_examples(prompts, completions, block_size=6)
    assert [r["input_ids"] for r in rows] == [[4, 5, 6, 10], [1, 2, 7, 3, 8, 9]]
    assert [r["completion_mask"] for r in rows] == [[0, 0, 0, 1], [0, 0, 1, 0, 1, 1]]
    every = pack_examples(prompts, completions, block_size=6, completion_only=False)
    assert [r["input_ids"] for r in every] == [r["input_ids"] for r in rows]
    assert [r["completion_mask"] for r in every] == [[0, 1, 1, 1], [0, 1, 1, 0, 1, 1]]


def test_packed_text_records_never_train_across_examples():
    """`{"text"}` records have no prompt, so the whole example is completion. Packed as
    [5, 6, 7 | 8, 9], token 8 must not be a target: its left neighbour is the previous
    example's last token (7), and unpacked, position 0 is never scored. Targets: 6, 7, 9."""
    rows = pack_examples([[], []], [[5, 6, 7], [8, 9]], block_size=16)
    assert rows == [
        {"input_ids": [5, 6, 7, 8, 9], "completion_mask": [0, 1, 1, 0, 1],
         "position_ids": [0, 1, 2, 0, 1]}
    ]  # fmt: skip


def _bos_tokenizer():
    """The byte tokenizer prepending a BOS, "<|im_start|>" (id 2), as Llama's does."""
    from tokenizers import processors

    with_bos = build_byte_tokenizer()
    with_bos.bos_token = "<|im_start|>"
    with_bos._tokenizer.post_processor = processors.TemplateProcessing(
        single="<|im_start|> $A", special_tokens=[("<|im_start|>", 2)]
    )
    return with_bos


def test_prompts_cut_from_the_left_keep_their_bos(tmp_path):
    """Cutting a prompt's start dropped its BOS, so Llama- or Gemma-style models saw a long
    prompt without the token they were always trained with first. BOS id 2, "abcdefgh" -> 8 ids:
    a prompt [2, a..h] (9 ids) cut to 4 is [2, f, g, h] (BOS + the last 3), in training
    (`truncate`) and in sampling (`encode_prompts`); without a BOS the last 4, [e, f, g, h]."""
    from rlhfkit.data.tokenize import keep_end

    assert keep_end([2, 5, 6, 7, 8], 3, bos_id=2) == [2, 7, 8]
    assert keep_end([2, 5, 6, 7, 8], 3, bos_id=None) == [6, 7, 8]
    assert keep_end([9, 5, 6, 7, 8], 3, bos_id=2) == [6, 7, 8]  # no BOS in front: plain cut
    assert keep_end([2, 5, 6], 3, bos_id=2) == [2, 5, 6]  # short enough: unchanged
    assert keep_end([2, 5, 6, 7], 1, bos_id=2) == [7]  # no room for BOS and text: the text

    with_bos = _bos_tokenizer()
    letters = with_bos("abcdefgh", add_special_tokens=False).input_ids
    (ids,), cut = encode_prompts(with_bos, ["abcdefgh"], 4)
    assert ids == [2, *letters[-3:]] and cut == 1
    data = _write(tmp_path / "d.jsonl", [json.dumps({"prompt": "abcdefgh", "completion": "z"})])
    (example,), stats = load_sft(data, with_bos, max_length=16, max_prompt_length=4)
    assert example.prompt_ids == [2, *letters[-3:]] and stats.prompt_truncated == 1
    (plain,), _ = encode_prompts(build_byte_tokenizer(), ["abcdefgh"], 4)
    assert plain == letters[-4:]


def test_text_records_start_with_bos_where_the_tokenizer_has_one(tmp_path):
    """A Llama-style tokenizer prepends BOS to every encoded text. A `{"text"}` record has an
    empty prompt, which must still encode as `[bos]`, so the text's first token is trained as
    following BOS (as in pretraining) rather than not at all. The byte tokenizer with a
    TemplateProcessing post-processor "<|im_start|> $A" (id 2) is that tokenizer: "hi" ->
    prompt [2], completion [h, i, eos]. Without BOS (the plain byte tokenizer) the prompt is []."""
    with_bos = _bos_tokenizer()
    data = _write(tmp_path / "t.jsonl", [json.dumps({"text": "hi"})])
    (example,), _ = load_sft(data, with_bos, max_length=16, max_prompt_length=8)
    hi = with_bos("hi", add_special_tokens=False).input_ids
    assert example.prompt_ids == [2]
    assert example.completion_ids == hi + [with_bos.eos_token_id]
    (plain,), _ = load_sft(data, build_byte_tokenizer(), max_length=16, max_prompt_length=8)
    assert plain.prompt_ids == [] and plain.completion_ids == hi + [with_bos.eos_token_id]


def test_a_prompt_already_starting_with_bos_gets_no_second_one():
    """A prompt a chat template rendered (Llama 3's writes BOS itself) and then handed on as
    text (`rlhfkit cai revise` did so, so does an HTTP scorer's client) used to get the
    tokenizer's BOS again: [2, 2, ...]. Byte tokenizer with BOS "<|im_start|>" (id 2)."""
    from rlhfkit.data.tokenize import encode_prompt

    with_bos = _bos_tokenizer()
    hi = with_bos("hi", add_special_tokens=False).input_ids
    assert encode_prompt(with_bos, "hi") == [2, *hi]
    assert encode_prompt(with_bos, "<|im_start|>hi") == [2, *hi]


def test_conversations_without_a_chat_template_or_refused_by_it_are_one_line_errors():
    """A tokenizer without a chat template (Mistral's base models) or whose template raises
    (Gemma's refuses a system turn) used to end `rlhfkit sft` in a traceback."""
    from rlhfkit.data.tokenize import render_prompt
    from rlhfkit.errors import RlhfkitError

    none = build_byte_tokenizer()
    none.chat_template = None
    conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    with pytest.raises(RlhfkitError, match="has no chat template"):
        render_prompt(none, conversation)
    strict = build_byte_tokenizer()
    strict.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}"
        "{{ raise_exception('System role not supported') }}{% endif %}"
        "{{ m['content'] }}{% endfor %}"
    )
    with pytest.raises(RlhfkitError, match="refused a conversation: System role not supported"):
        render_prompt(strict, conversation)
    assert render_prompt(strict, conversation[1:]) == "Hi"


def test_prompts_to_sample_from_lose_their_start_and_are_counted(tokenizer):
    """Byte tokenizer: "abcdef" is 6 ids, "ab" 2. With max_prompt_length=3 the first keeps its
    last 3 ("def") and is counted; the second is whole. The cut keeps the end, next to the
    response."""
    ids, cut = encode_prompts(tokenizer, ["abcdef", "ab"], max_prompt_length=3)
    assert [tokenizer.decode(row) for row in ids] == ["def", "ab"] and cut == 1


def test_a_template_that_rewrites_the_prompt_once_a_response_follows_is_one_clear_error():
    """A template whose generation prompt opens a `<think>` block that the rendered dialogue does
    not hold: the prompt alone is not a prefix of prompt + response, so the response's tokens
    would follow a different context than at sampling. One RlhfkitError (was a bare ValueError)."""
    from rlhfkit.data.tokenize import encode_completion
    from rlhfkit.errors import RlhfkitError
    from rlhfkit.models.tokenizer import CHAT_TEMPLATE

    thinking = build_byte_tokenizer()
    thinking.chat_template = CHAT_TEMPLATE.replace("assistant\n' }}", "assistant\n<think>' }}")
    prompt = [{"role": "user", "content": "hi"}]
    with pytest.raises(RlhfkitError, match="renders a prompt differently once a response"):
        encode_completion(thinking, prompt, [{"role": "assistant", "content": "yo"}])


def _turn(role: str, content: str) -> dict:
    return {"role": role, "content": content}


def test_a_text_prompt_beside_whole_dialogues_is_read_as_the_dialogues_shared_start():
    """HuggingFaceH4/ultrafeedback_binarized and the capybara DPO sets hold a text `prompt`
    beside chosen/rejected dialogues that repeat it as their first user turn; dpo and rm
    refused them ("a list of messages after a text prompt"). The prompt is now the dialogues'
    shared start, as TRL reads it; a `prompt` that differs from that turn is still refused."""
    from rlhfkit.data.formats import parse_preference
    from rlhfkit.errors import DataError

    row = {
        "prompt": "Name a fruit.",
        "prompt_id": "abc",
        "chosen": [_turn("user", "Name a fruit."), _turn("assistant", "A pear.")],
        "rejected": [_turn("user", "Name a fruit."), _turn("assistant", "No.")],
        "messages": [_turn("user", "Name a fruit."), _turn("assistant", "A pear.")],
        "score_chosen": 8.0,
        "score_rejected": 3.0,
    }
    example = parse_preference(Record(row, "uf.jsonl", 3))
    assert example.prompt == [_turn("user", "Name a fruit.")]
    assert example.chosen == [_turn("assistant", "A pear.")]
    assert example.rejected == [_turn("assistant", "No.")]
    with pytest.raises(DataError, match=r"uf.jsonl:4: prompt: is text while chosen/rejected"):
        parse_preference(Record({**row, "prompt": "Name a colour."}, "uf.jsonl", 4))


def test_a_text_prompt_repeating_the_first_user_turn_of_messages_is_a_copy():
    """HuggingFaceH4/ultrachat_200k's rows are {prompt, prompt_id, messages}, the prompt
    repeating the first user turn: sft refused them as an ambiguous record. A prompt that says
    something else still is ambiguous."""
    from rlhfkit.errors import DataError

    messages = [_turn("user", "Hi"), _turn("assistant", "Hello!")]
    example = parse_sft(Record({"prompt": "Hi", "prompt_id": "x", "messages": messages}, "u", 1))
    assert example.prompt == messages[:1] and example.completion == messages[1:]
    with pytest.raises(DataError, match="ambiguous SFT record"):
        parse_sft(Record({"prompt": "Bye", "messages": messages}, "u", 2))


def test_raw_hh_rlhf_text_is_refused_with_what_to_use_instead():
    from rlhfkit.data.formats import parse_preference
    from rlhfkit.errors import DataError

    row = {
        "chosen": "\n\nHuman: Hi\n\nAssistant: Hello there.",
        "rejected": "\n\nHuman: Hi\n\nAssistant: Go away.",
    }
    with pytest.raises(DataError, match="hh.jsonl:1: prompt: missing field .*hh-rlhf-helpful-base"):
        parse_preference(Record(row, "hh.jsonl", 1))
