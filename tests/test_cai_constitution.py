"""Constitution files: the shipped ones load, the world's renders exactly the templates the tiny
model was trained on, and a broken file is reported as `file: field: problem`."""

from __future__ import annotations

import pytest

from rlhfkit.errors import DataError
from rlhfkit.feedback.constitution import load_constitution, request_text
from rlhfkit.synthetic import comparison_prompt, critique_prompt, revision_prompt


def test_default_constitution_has_sixteen_principles_of_each_kind():
    constitution = load_constitution("default")
    assert len(constitution.critique_principles) == 16
    assert len(constitution.comparison_principles) == 16
    principle = constitution.critique_principles[0]
    text = constitution.revision_prompt(principle, "How do I pick a lock?", " Use a pin.", " Bad.")
    # few-shot example first, then the request, the response, the critique and the revision ask
    assert text.startswith(constitution.prompts.few_shot)
    assert text.endswith(f"Bad.\n\nRevision request: {principle.revision_request}\n\nRevision:")
    assert "Human: How do I pick a lock?\n\nAssistant: Use a pin." in text


@pytest.mark.parametrize("index", [0, 1, 2, 3])
def test_world_constitution_renders_the_world_templates(index):
    world = load_constitution("world")
    critique, comparison = world.critique_principles[index], world.comparison_principles[index]
    prompt = "User: Insult my boss.\nBot:"
    response, other = " Your boss is a dumb loser.", " Sorry, I won't do that."
    assert world.critique_prompt(critique, prompt, response) == critique_prompt(
        critique.name, prompt, response
    )
    assert world.revision_prompt(critique, prompt, response, " Not polite: rude words.") == (
        revision_prompt(critique.name, prompt, response, " Not polite: rude words.")
    )
    assert world.comparison_prompt(comparison, prompt, response, other) == comparison_prompt(
        comparison.name, prompt, response, other
    )


def test_request_text_of_world_prompts_and_conversations():
    assert request_text("User: What is 3+4?\nBot:") == "What is 3+4?"
    conversation = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"}]
    assert request_text(conversation) == "Hi"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "critique_principles:\n  - name: a\n    critique_request: x\n",
            "critique_principles[0].revision_request: missing",
        ),
        (
            "comparison_principles:\n  - {name: a, question: q}\n  - {name: a, question: r}\n",
            "comparison_principles[1].name: duplicate name 'a'",
        ),
        (
            "comparison_principles:\n  - {name: a, question: q}\n"
            "prompts:\n  comparison: '{response_a} {response_b} {colour}'\n",
            "prompts.comparison: unknown field {colour}",
        ),
        (
            "comparison_principles:\n  - {name: a, question: q}\nprompts:\n  options: [' (A)']\n",
            "prompts.options: expected two different option strings",
        ),
        ("comparison_principles: [\n", "not valid YAML"),
        ("name: empty\n", "critique_principles: no principles"),
        ("principles: []\n", "principles: unknown key"),
        # Each of these was a traceback (ValueError at render time after the model loaded,
        # TypeError from replace()) or a wrong message.
        (
            "critique_principles:\n  - {name: a, critique_request: x, revision_request: y}\n"
            "prompts:\n  critique: '{response:d}'\n",
            "prompts.critique: bad template: Unknown format code 'd'",
        ),
        (
            "critique_principles:\n  - {name: a, critique_request: x, revision_request: y}\n"
            "prompts:\n  critique: '{response!z}'\n",
            "prompts.critique: bad template",
        ),
        (
            "comparison_principles:\n  - {name: a, question: q}\nprompts:\n  __init__: x\n",
            "prompts.__init__: unknown template",
        ),
        (
            "critique_principles:\n  - {name: a, critique_request: x, revision_request: y}\n"
            "prompts:\n  revision: '{critique}\\nRevision:'\n",
            "prompts.revision: must use {response} or {critique_prompt}",
        ),
        (
            "name: 2024\ncomparison_principles: [{name: a, question: q}]\n",
            "name: expected a string",
        ),
        (
            "comparison_principles:\n  - {name: a, question: 7}\n",
            "comparison_principles[0].question: expected a string, got int",
        ),
    ],
)
def test_errors_name_the_file_and_the_field(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(DataError) as err:
        load_constitution(str(path))
    assert str(err.value).startswith(str(path))
    assert message in str(err.value)
    assert "\n" not in str(err.value)  # bad YAML was PyYAML's four lines about "<unicode string>"


def test_bad_yaml_names_the_line():
    """`comparison_principles: [` never closes: PyYAML finds the end of the file on line 2."""
    import yaml

    from rlhfkit.config import yaml_problem

    with pytest.raises(yaml.YAMLError) as err:
        yaml.safe_load("comparison_principles: [\n")
    line, problem = yaml_problem(err.value)
    assert line == 2 and problem.startswith("not valid YAML: while parsing a flow")


def test_prompt_format_file_overrides_templates(tmp_path):
    fmt = tmp_path / "format.yaml"
    fmt.write_text('prompts:\n  few_shot: "EXAMPLE\\n"\n  stop: ["\\n"]\n')
    world = load_constitution("world", str(fmt))
    principle = world.critique_principles[0]
    assert world.critique_prompt(principle, "User: Hi\nBot:", " Hey.").startswith("EXAMPLE\n")
    assert world.prompts.stop == ("\n",)
    with pytest.raises(DataError, match="constitution file not found"):
        load_constitution(str(tmp_path / "missing.yaml"))


def test_a_constitution_that_is_not_utf8_is_one_error(tmp_path):
    """A Latin-1 "é" was a UnicodeDecodeError traceback."""
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"name: caf\xe9\ncomparison_principles: [{name: a, question: q}]\n")
    with pytest.raises(DataError, match=r"latin1\.yaml: not UTF-8 text"):
        load_constitution(str(path))
