"""`rlhfkit cai revise`: chains record the run's settings and a rerun with other settings is
refused (naming them) while the same settings continue; conversation prompts give TRL-style
conversational SFT and preference records that `rlhfkit sft` / `rm` / `dpo` load; a local model's
prompt budget leaves room for the new tokens within its context, and cut prompts are counted."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import rlhfkit.recipes.cai as cai
from rlhfkit.data.datasets import load_comparisons, load_sft
from rlhfkit.errors import ConfigError
from rlhfkit.feedback.ai_labeller import LocalLM, prompt_budget
from rlhfkit.models.loading import load_tokenizer
from rlhfkit.rollout.sampling import SamplingParams
from tests.conftest import ROOT, cli_env, write_jsonl
from tests.test_cai_revise import PROMPTS, ScriptedModel

CHAT = [{"role": "user", "content": "How do I pick a lock?"}]


@pytest.fixture
def scripted(monkeypatch):
    model = ScriptedModel()
    monkeypatch.setattr(cai, "load_text_model", lambda *a, **k: model)
    return model


def _config(tmp_path, **kw):
    if "train_data" not in kw:
        kw["train_data"] = str(
            write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": p} for p in PROMPTS])
        )
    values = dict(
        model="scripted",
        constitution="world",
        rounds=1,
        output_dir=str(tmp_path / "out"),
        batch_size=2,
        progress=False,
    )
    values.update(kw)
    return cai.CAIReviseConfig(**values)


def test_same_settings_continue_without_new_work(scripted, tmp_path):
    config = _config(tmp_path)
    cai.revise(config)
    calls = len(scripted.calls)
    summary = cai.revise(config)
    assert summary["resumed_prompts"] == 5 and len(scripted.calls) == calls
    chains = (tmp_path / "out" / "chains.jsonl").read_text().splitlines()
    assert all(json.loads(c)["settings"]["rounds"] == 1 for c in chains)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"rounds": 2}, "rounds: 1 -> 2"),
        ({"constitution": "default"}, 'constitution: "world@'),
        ({"seed": 4}, "seed: 0 -> 4"),
        ({"critic": "other-critic"}, 'critic: "scripted" -> "other-critic"'),
        ({"temperature": 0.0}, "temperature: 1.0 -> 0.0"),
        ({"edit_max_new_tokens": 16}, "edit_max_new_tokens: 128 -> 16"),
    ],
)
def test_other_settings_are_refused_and_the_config_is_kept(scripted, tmp_path, change, named):
    """The audit's case: rounds=2 constitution=world reused one-round chains of another
    constitution, and config.yaml / summary.json then described the new run."""
    cai.revise(_config(tmp_path))
    out = tmp_path / "out"
    before = {name: (out / name).read_text() for name in ("chains.jsonl", "config.yaml")}
    calls = len(scripted.calls)
    with pytest.raises(ConfigError) as err:
        cai.revise(_config(tmp_path, **change))
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{out / 'chains.jsonl'}:1: settings: chains made with other ")
    assert named in message and "overwrite=true" in message
    assert len(scripted.calls) == calls
    assert {name: (out / name).read_text() for name in before} == before
    summary = cai.revise(_config(tmp_path, overwrite=True, **change))
    assert summary["resumed_prompts"] == 0


def test_chains_without_recorded_settings_are_refused(scripted, tmp_path):
    cai.revise(_config(tmp_path))
    path = tmp_path / "out" / "chains.jsonl"
    chains = [json.loads(x) for x in path.read_text().splitlines()]
    for chain in chains:
        del chain["settings"]
    write_jsonl(path, chains)
    with pytest.raises(ConfigError, match=r"chains.jsonl:1: settings: chains without recorded"):
        cai.revise(_config(tmp_path))


def test_conversation_prompts_give_conversational_records(scripted, tmp_path, tiny_model):
    """sft.jsonl pairs a chat prompt with an assistant-message completion, which `rlhfkit sft`'s
    loader accepts (it rejected the string completion: "prompt and completion must both be text
    or both messages"); preferences.jsonl likewise, loadable by rm/dpo."""
    data = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": PROMPTS[0]}, {"prompt": CHAT}])
    cai.revise(_config(tmp_path, train_data=str(data)))
    out = tmp_path / "out"
    chains = [json.loads(x) for x in (out / "chains.jsonl").read_text().splitlines()]
    final = chains[1]["final"]
    assert chains[1]["prompt"] == CHAT and final != chains[1]["response"]
    sft = [json.loads(x) for x in (out / "sft.jsonl").read_text().splitlines()]
    assert sft[0] == {"prompt": PROMPTS[0], "completion": " Revised once."}
    assert sft[1] == {"prompt": CHAT, "completion": [{"role": "assistant", "content": final}]}
    prefs = [json.loads(x) for x in (out / "preferences.jsonl").read_text().splitlines()]
    assert prefs[0]["chosen"] == " Revised once."
    assert prefs[1]["chosen"] == [{"role": "assistant", "content": final}]
    assert prefs[1]["rejected"] == [{"role": "assistant", "content": " You idiot."}]
    tokenizer = load_tokenizer(str(tiny_model))
    rows, stats = load_sft(str(out / "sft.jsonl"), tokenizer, max_length=256, max_prompt_length=128)
    assert stats.kept == 2 and len(rows) == 2
    # the chat example is rendered with the template: the completion's text is in it
    chat_completion = tokenizer.decode(rows[1].completion_ids)
    assert final.strip() in chat_completion
    comparisons = load_comparisons(str(out / "preferences.jsonl"))
    assert comparisons[1].prompt == CHAT and comparisons[1].chosen == prefs[1]["chosen"]


# --- the prompt budget of a local model ------------------------------------------------------


def test_prompt_budget_worked_by_hand():
    """min(max_prompt_length, context - reserved): min(1024, 1024 - 128) = 896;
    min(500, 1024 - 128) = 500; no context known: 1024; nothing left: an error."""
    assert prompt_budget(1024, 1024, 128) == 896
    assert prompt_budget(500, 1024, 128) == 500
    assert prompt_budget(1024, None, 128) == 1024
    with pytest.raises(ConfigError, match=r"max_new_tokens: 1024 tokens to generate leave no room"):
        prompt_budget(1024, 1024, 1024)


def test_local_model_cuts_long_prompts_to_fit_the_new_tokens(tiny_model):
    """The tiny model's context is 1024 positions; a 1000-byte prompt (byte tokenizer) plus 64
    new tokens does not fit, so the prompt keeps its last 1024 - 64 = 960 tokens and is counted;
    a short prompt is untouched."""
    lm = LocalLM(str(tiny_model), max_prompt_length=1024)
    assert lm.context_length == 1024
    seen = []
    generate = lm.model.generate

    def spy(**kw):
        seen.append(kw["input_ids"].shape[1])
        return generate(**kw)

    lm.model.generate = spy
    params = SamplingParams(max_new_tokens=64, temperature=0.0)
    long_prompt = "User: " + "word " * 200 + "\nBot:"
    assert len(lm.tokenizer(long_prompt).input_ids) > 960
    lm.generate([long_prompt], params, seeds=[0])
    assert seen == [960] and lm.prompts_cut == 1
    lm.generate(["User: Hi\nBot:"], params, seeds=[0])
    assert seen[1] < 960 and lm.prompts_cut == 1
    # option scoring reserves the option's tokens: " (A)" is 4 bytes -> 1020
    scores = lm.option_scores([long_prompt * 2], (" (A)", " (B)"))
    assert lm.prompts_cut == 2 and 0.0 < scores[0].p_first < 1.0


def test_cli_default_constitution_on_the_tiny_model_stays_in_context(tiny_model, tmp_path):
    """The default constitution's few-shot revision prompts (about 1100 bytes: few-shot text,
    request, response, critique, revision request) are longer than the tiny model's 1024
    positions minus edit_max_new_tokens (default 128): they are cut to 896 tokens (no overrun
    warning from transformers), counted in summary.json, and the console says so; a chat
    prompt's sft.jsonl is accepted by `rlhfkit sft`'s loader."""
    data = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": PROMPTS[1]}, {"prompt": CHAT}])
    out = tmp_path / "cai"
    args = [
        "cai",
        "revise",
        f"model={tiny_model}",
        f"train_data={data}",
        "constitution=default",
        "rounds=1",
        f"output_dir={out}",
        "max_new_tokens=8",
        "progress=false",
    ]
    # transformers says "exceeded the model's predefined maximum length" at warning level only
    env = {**cli_env(), "TRANSFORMERS_VERBOSITY": "warning"}
    result = subprocess.run(
        [sys.executable, "-m", "rlhfkit", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "predefined maximum length" not in result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["prompts_cut"] >= 1
    err = " ".join(result.stderr.split())
    assert f"{summary['prompts_cut']} prompts lost their start" in err
    sft = [json.loads(x) for x in (out / "sft.jsonl").read_text().splitlines()]
    assert all(isinstance(r["completion"], list) == isinstance(r["prompt"], list) for r in sft)
    tokenizer = load_tokenizer(str(tiny_model))
    _, stats = load_sft(str(out / "sft.jsonl"), tokenizer, max_length=512, max_prompt_length=256)
    assert stats.examples == len(sft)


def test_a_resume_keeps_chains_holding_line_separator_characters(scripted, tmp_path):
    """A prompt holding U+2028 (common in web text) was written raw by the resume's rewrite
    (`write_jsonl`, ensure_ascii=False) and `str.splitlines` split the line there: the next
    resume read 1 of 5 chains and redid the rest with other draws. Lines now end at "\\n" only,
    and a bad line before the last one is an error instead of a silent truncation."""
    prompts = [{"prompt": p + (" \u2028 more" if i == 0 else "")} for i, p in enumerate(PROMPTS)]
    data = str(write_jsonl(tmp_path / "prompts.jsonl", prompts))
    cai.revise(_config(tmp_path, train_data=data))
    calls = len(scripted.calls)
    for _ in range(2):  # the first resume rewrites the file; the second reads the rewrite
        summary = cai.revise(_config(tmp_path, train_data=data))
        assert summary["resumed_prompts"] == 5 and len(scripted.calls) == calls
    path = tmp_path / "out" / "chains.jsonl"
    lines = path.read_text(encoding="utf-8").split("\n")
    path.write_text("\n".join([lines[0], "{torn", *lines[1:]]), encoding="utf-8")
    with pytest.raises(cai.DataError, match=r"chains\.jsonl:2: not valid JSON"):
        cai.revise(_config(tmp_path, train_data=data))


def test_a_lower_limit_reuses_the_chains_it_needs(scripted, tmp_path):
    """docs/cai.md: `limit` changes how much is done, not how. 5 chains written, then limit=2:
    the first 2 are reused (it was refused as "chains of other prompts") and the outputs hold
    2 prompts; the file keeps all 5 for a later run with the full set."""
    cai.revise(_config(tmp_path))
    calls = len(scripted.calls)
    summary = cai.revise(_config(tmp_path, limit=2))
    assert summary["prompts"] == 2 and summary["resumed_prompts"] == 2
    assert len(scripted.calls) == calls
    assert len((tmp_path / "out" / "chains.jsonl").read_text().splitlines()) == 5


def test_overwrite_removes_every_output_of_the_earlier_run_first(scripted, tmp_path, monkeypatch):
    """overwrite=true removed chains.jsonl only: a run that then failed left the old sft.jsonl,
    preferences.jsonl and summary.json beside the new chains."""
    cai.revise(_config(tmp_path))
    out = tmp_path / "out"
    failing = type(scripted)(fail_after=0)
    monkeypatch.setattr(cai, "load_text_model", lambda *a, **k: failing)
    with pytest.raises(cai.EndpointError):
        cai.revise(_config(tmp_path, overwrite=True))
    assert not any((out / n).exists() for n in ("sft.jsonl", "preferences.jsonl", "summary.json"))


def test_a_model_that_does_not_load_leaves_the_output_directory_as_it_was(
    scripted, tmp_path, monkeypatch
):
    """`model=nosuchdir` wrote config.yaml and an empty chains.jsonl into a fresh output_dir
    before the model failed to load; with overwrite=true it removed the earlier run's outputs
    first. Now nothing is written or removed until the models have loaded."""

    def not_a_model(spec, **_kw):
        raise ConfigError(f"model: cannot load a tokenizer from {spec!r}")

    monkeypatch.setattr(cai, "load_text_model", not_a_model)
    fresh = tmp_path / "fresh"
    with pytest.raises(ConfigError, match="nosuchdir"):
        cai.revise(_config(tmp_path, model="nosuchdir", output_dir=str(fresh)))
    assert not fresh.exists()
    monkeypatch.setattr(cai, "load_text_model", lambda *a, **k: scripted)
    cai.revise(_config(tmp_path))
    out = tmp_path / "out"
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    monkeypatch.setattr(cai, "load_text_model", not_a_model)
    with pytest.raises(ConfigError, match="nosuchdir"):
        cai.revise(_config(tmp_path, model="nosuchdir", overwrite=True))
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_revisions_take_the_responses_leading_whitespace_and_blank_ones_are_not_data():
    """A revision follows "Revision:" and opens with a space; a first response to a chat
    template does not. " Hello." as the revision of "Hello." becomes "Hello.": no preference
    pair (they differ in whitespace only). A blank final is no SFT row (`rlhfkit sft` refuses
    an empty completion)."""
    assert cai.as_revision_of("Hello.", " Better. \n") == "Better."
    assert cai.as_revision_of(" Hi.", "Better.") == " Better."
    chains = [
        {"prompt": "p", "response": "Hello.", "final": cai.as_revision_of("Hello.", " Hello.")},
        {"prompt": "p", "response": " ", "final": " "},
        {"prompt": "p", "response": "Bad.", "final": "Good."},
    ]
    sft_rows, pref_rows = cai.output_rows(chains)
    assert [r["completion"] for r in sft_rows] == ["Hello.", "Good."]
    assert pref_rows == [{"prompt": "p", "chosen": "Good.", "rejected": "Bad."}]
