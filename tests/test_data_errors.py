"""Bad data files and contradictory records: each is one `file:line: field: problem` DataError,
never a traceback and never a silent choice (DESIGN.md, "Data")."""

from __future__ import annotations

import json
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rlhfkit.data.datasets import load_comparisons, load_prompts, load_sft
from rlhfkit.data.formats import PreferenceExample, RankingExample, parse_sft
from rlhfkit.data.io import Record, read_records
from rlhfkit.errors import DataError
from rlhfkit.models.tokenizer import build_byte_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return build_byte_tokenizer()


def _write(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


def _sft(path, tokenizer):
    return load_sft(path, tokenizer, max_length=64, max_prompt_length=32)


# --- files that used to give tracebacks --------------------------------------------------------


def test_a_byte_that_is_not_utf8_names_its_line_and_column(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(
        b'{"prompt": "a", "completion": "b"}\n{"prompt": "caf\xe9", "completion": "b"}\n'
    )
    with pytest.raises(
        DataError, match=r"latin1\.jsonl:2: not valid UTF-8 \(byte 0xe9 at column 16"
    ):
        read_records(str(path))


def test_a_byte_that_is_not_utf8_in_json_and_csv(tmp_path):
    (tmp_path / "d.json").write_bytes(b'[\n {"prompt": "a"},\n {"prompt": "\xff"}\n]\n')
    with pytest.raises(DataError, match=r"d\.json:3: not valid UTF-8 \(byte 0xff at column 14"):
        read_records(str(tmp_path / "d.json"))
    (tmp_path / "d.csv").write_bytes(b"prompt,completion\na,b\n\xe9,c\n")
    with pytest.raises(DataError, match=r"d\.csv:3: not valid UTF-8 \(byte 0xe9 at column 1"):
        read_records(str(tmp_path / "d.csv"))


def test_a_corrupt_parquet_file(tmp_path):
    (tmp_path / "bad.parquet").write_text("not parquet\n")
    with pytest.raises(DataError, match=r"^\S*bad\.parquet: not a readable Parquet file \(") as err:
        read_records(str(tmp_path / "bad.parquet"))
    assert "\n" not in str(err.value)


def test_csv_rows_with_more_or_fewer_cells_than_the_header(tmp_path):
    more = _write(tmp_path / "more.csv", ["prompt,chosen,rejected", "a,b,c", '"a","b","c","d"'])
    with pytest.raises(DataError, match=r"more\.csv:3: 4 cells, the header has 3$"):
        read_records(more)
    fewer = _write(tmp_path / "fewer.csv", ["prompt,chosen,rejected", "a,b,c", "a,b"])
    with pytest.raises(DataError, match=r"fewer\.csv:3: 2 cells, the header has 3$"):
        read_records(fewer)


def test_csv_line_is_where_a_record_starts_when_a_quoted_cell_spans_lines(tmp_path):
    path = _write(
        tmp_path / "multi.csv",
        ["prompt,chosen,rejected", '"line one', 'line two","b","c"', "", '"x","y","z"', '"a","b"'],
    )
    with pytest.raises(DataError, match=r"multi\.csv:6: 2 cells, the header has 3"):
        read_records(path)
    good = _write(
        tmp_path / "good.csv", ["prompt,chosen,rejected", '"line one', 'line two","b","c"', "x,y,z"]
    )
    records = read_records(good)
    assert [r.line for r in records] == [2, 4]
    assert records[0].data == {"prompt": "line one\nline two", "chosen": "b", "rejected": "c"}


def test_csv_header_naming_a_column_twice(tmp_path):
    path = _write(tmp_path / "dup.csv", ["prompt,completion,prompt", "a,b,c"])
    with pytest.raises(DataError, match=r"dup\.csv:1: prompt: column given more than once"):
        read_records(path)


def test_a_ranking_mixing_ints_and_strings(tmp_path):
    path = _write(tmp_path / "r.jsonl", ['{"prompt":"a","responses":["x","y"],"ranking":[0,"1"]}'])
    with pytest.raises(DataError, match=r"r\.jsonl:1: ranking: expected integer indices, got"):
        load_comparisons(path)


# --- messages that named the wrong thing -------------------------------------------------------


def test_messages_given_as_a_string(tmp_path, tokenizer):
    path = _write(tmp_path / "m.jsonl", ['{"messages": "hello"}'])
    with pytest.raises(
        DataError, match=r"m\.jsonl:1: messages: expected a list of messages, got str"
    ):
        _sft(path, tokenizer)


def test_message_content_given_as_a_list_of_parts(tmp_path, tokenizer):
    """OpenAI-style content parts are refused by name (they used to read "got list")."""
    row = {
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": [{"type": "text", "text": "hello"}]},
        ]
    }
    path = _write(tmp_path / "m.jsonl", [json.dumps(row)])
    with pytest.raises(
        DataError,
        match=r"m\.jsonl:1: messages\[1\]\.content: expected a string, got a list of content "
        r"parts; .*give each message's text as one string",
    ):
        _sft(path, tokenizer)


def test_a_directory_is_not_a_missing_file(tmp_path):
    (tmp_path / "data.jsonl").mkdir()
    for spec in (tmp_path, tmp_path / "data.jsonl"):
        with pytest.raises(DataError, match=r": is a directory"):
            read_records(str(spec))


@pytest.mark.parametrize("content", ["", "\n  \n\n", "prompt,completion\n"])
def test_a_file_without_records_is_an_error_for_every_loader(tmp_path, tokenizer, content):
    suffix = "csv" if content.startswith("prompt") else "jsonl"
    path = tmp_path / f"empty.{suffix}"
    path.write_text(content)
    assert read_records(str(path)) == []  # the reader itself allows it (optional files)
    for load in (lambda p: _sft(p, tokenizer), load_prompts, load_comparisons):
        with pytest.raises(DataError, match=rf"^{str(path)}: no records$"):
            load(str(path))


# --- contradictory or duplicate input ----------------------------------------------------------


@pytest.mark.parametrize(
    ("row", "fields"),
    [
        ({"text": "hello", "prompt": "a"}, "prompt and text"),
        ({"text": "hello", "prompt": "a", "completion": "b"}, "prompt, completion and text"),
        (
            {"messages": [{"role": "assistant", "content": "x"}], "completion": "b"},
            "completion and messages",
        ),
    ],
)
def test_an_sft_record_in_two_formats_is_ambiguous(tmp_path, tokenizer, row, fields):
    path = _write(tmp_path / "s.jsonl", [json.dumps(row)])
    with pytest.raises(DataError, match=rf"s\.jsonl:1: ambiguous SFT record: has both {fields} "):
        _sft(path, tokenizer)


def test_a_preference_record_that_also_ranks_is_ambiguous(tmp_path):
    row = {
        "prompt": "p",
        "chosen": "a",
        "rejected": "b",
        "responses": ["a", "b"],
        "ranking": [1, 0],
    }
    path = _write(tmp_path / "c.jsonl", [json.dumps(row)])
    with pytest.raises(
        DataError,
        match=r"c\.jsonl:1: ambiguous preference/ranking record: has both chosen, rejected and "
        r"responses, ranking \(use one of \{chosen, rejected\}, \{responses, ranking\}\)$",
    ):
        load_comparisons(path)
    row = {"prompt": "p", "chosen": "a", "rejected": "b", "ranking": [0, 1]}
    path = _write(tmp_path / "d.jsonl", [json.dumps(row)])
    with pytest.raises(DataError, match=r"d\.jsonl:1: ambiguous preference/ranking record"):
        load_comparisons(path)


def test_absent_parquet_columns_do_not_make_records_ambiguous(tmp_path):
    """A Parquet file of preference and ranking rows has every column in every row (None where
    a row has no value): each row still parses in its own format."""
    rows = [
        {"prompt": "p", "chosen": "a", "rejected": "b", "responses": None, "ranking": None},
        {"prompt": "q", "chosen": None, "rejected": None, "responses": ["x", "y", "z"]},
    ]
    rows[1]["ranking"] = [2, 0, 1]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "mixed.parquet")
    pref, rank = load_comparisons(str(tmp_path / "mixed.parquet"))
    assert isinstance(pref, PreferenceExample) and (pref.chosen, pref.rejected) == ("a", "b")
    assert isinstance(rank, RankingExample) and rank.ranking == [2, 0, 1]


def test_a_key_given_twice_is_an_error(tmp_path, tokenizer):
    path = _write(
        tmp_path / "dup.jsonl",
        ['{"prompt": "a", "completion": "b"}', '{"prompt":"a","completion":"b","completion":"c"}'],
    )
    with pytest.raises(DataError, match=r"dup\.jsonl:2: completion: key given more than once"):
        _sft(path, tokenizer)
    nested = {"prompt": "a", "completion": "b"}
    text = json.dumps([nested, nested]).replace('"b"}]', '"b", "x": 1, "x": 2}]')
    (tmp_path / "dup.json").write_text(text)
    with pytest.raises(DataError, match=r"dup\.json:2: x: key given more than once"):
        read_records(str(tmp_path / "dup.json"))
    message = '{"role": "user", "content": "a", "content": "b"}'
    path = _write(tmp_path / "msg.jsonl", ['{"messages": [' + message + "]}"])
    with pytest.raises(DataError, match=r"msg\.jsonl:1: messages\[0\]\.content: key given more"):
        read_records(path)


@pytest.mark.parametrize("margin", ["true", "false"])
def test_a_boolean_margin_is_refused(tmp_path, margin):
    path = _write(
        tmp_path / "m.jsonl",
        [f'{{"prompt": "a", "chosen": "b", "rejected": "c", "margin": {margin}}}'],
    )
    with pytest.raises(DataError, match=r"m\.jsonl:1: margin: expected a number, got (True|False)"):
        load_comparisons(path)


# --- valid data still loads --------------------------------------------------------------------


def test_valid_records_of_every_format_still_load(tmp_path, tokenizer):
    user = {"role": "user", "content": "hi"}
    bot = {"role": "assistant", "content": "yo"}
    sft = _write(
        tmp_path / "sft.jsonl",
        [
            json.dumps({"prompt": "a", "completion": "b", "kind": "x"}),
            json.dumps({"messages": [user, bot]}),
            json.dumps({"text": "plain text"}),
            json.dumps({"prompt": "caf\u00e9 \u2028", "completion": "\u00e9t\u00e9"}),
        ],
    )
    rows, stats = _sft(sft, tokenizer)
    assert len(rows) == 4 and stats.kept == 4
    prefs = _write(
        tmp_path / "prefs.jsonl",
        [
            json.dumps({"prompt": "p", "chosen": "a", "rejected": "b", "margin": 2}),
            json.dumps({"prompt": "p", "responses": ["a", "b"], "ranking": [1, 0]}),
        ],
    )
    pref, rank = load_comparisons(prefs)
    assert pref.margin == 2.0 and rank.ranking == [1, 0]
    assert parse_sft(Record({"text": "t", "prompt": None}, "f", 1)).completion == "t"


# --- responses in their prompt's format --------------------------------------------------------

CHAT = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("row", "field"),
    [
        ({"prompt": CHAT, "completion": [{"role": "user", "content": "again"}]}, "completion"),
        ({"prompt": CHAT, "chosen": [{"role": "user", "content": "a"}], "rejected": "b"}, "chosen"),
        ({"prompt": CHAT, "responses": ["a", [{"role": "system", "content": "b"}]],
          "ranking": [0, 1]}, "responses[1]"),
    ],
)  # fmt: skip
def test_a_conversational_response_opening_with_another_turn_is_refused(
    tmp_path, tokenizer, row, field
):
    """The prompt renders with the generation prompt (`<|im_start|>assistant\\n`); a response
    that opens with a user (or system) turn does not follow it, and tokenising it used to raise a
    bare ValueError without file or line."""
    path = _write(tmp_path / "d.jsonl", [json.dumps(row)])
    where = re.escape(f"d.jsonl:1: {field}[0].role: ")
    with pytest.raises(DataError, match=where + ".*assistant's turn"):
        _sft(path, tokenizer) if "completion" in row else load_comparisons(path)


def test_messages_after_a_text_prompt_are_refused(tmp_path):
    """A chat template needs the whole dialogue as messages; a text prompt cannot be one (the
    old code split the prompt string into characters and failed inside the template)."""
    row = {"prompt": "Q:", "chosen": [{"role": "assistant", "content": "a"}], "rejected": "b"}
    path = _write(tmp_path / "p.jsonl", [json.dumps(row)])
    with pytest.raises(DataError, match=r"p\.jsonl:1: chosen: a list of messages after a text"):
        load_comparisons(path)


def test_a_text_response_after_a_conversation_is_the_assistant_reply(tmp_path, tokenizer):
    """After a chat prompt, "a" is read as [{"role": "assistant", "content": "a"}] in pairs and
    rankings alike, so training renders it with the template's end of turn as scoring does:
    "a<|im_end|>\\n" is 3 byte-tokenizer ids [a, <|im_end|>=1, "\\n"], not "a" + EOS (2 ids)."""
    from rlhfkit.data.tokenize import encode_completion

    rows = [
        {"prompt": CHAT, "chosen": "a", "rejected": ""},
        {"prompt": CHAT, "responses": ["a", "b"], "ranking": [1, 0]},
    ]
    pair, ranking = load_comparisons(_write(tmp_path / "c.jsonl", [json.dumps(r) for r in rows]))
    reply = [{"role": "assistant", "content": "a"}]
    assert pair.chosen == reply and pair.rejected == [{"role": "assistant", "content": ""}]
    assert ranking.responses == [reply, [{"role": "assistant", "content": "b"}]]
    ids = encode_completion(tokenizer, CHAT, pair.chosen)
    assert ids == tokenizer("a", add_special_tokens=False).input_ids + [1, 13]
