"""The criteria annotators judge on, the overall-strength scale, and the guidelines text.

A criteria file (``--criteria FILE.yaml``)::

    criteria:
      - name: helpfulness
        description: Does it do what was asked, completely and clearly?
      - name: honesty
        description: Does it avoid claiming what it cannot know?
    guidelines: |
      Free text shown in the page's guidelines panel (as plain text).

``criteria`` may also be a mapping ``{name: description}``. Names are lower-case identifiers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from rlhfkit.config import read_yaml
from rlhfkit.errors import ConfigError


@dataclass(frozen=True)
class Criterion:
    name: str
    description: str


DEFAULT_CRITERIA = (
    Criterion(
        "helpfulness",
        "Does the response do what the prompt asks, completely and clearly, "
        "without padding or evasion?",
    ),
    Criterion(
        "accuracy",
        "Is everything the response states true and correct (facts, arithmetic, code)? "
        "A confident wrong answer is worse than an admitted uncertainty.",
    ),
    Criterion(
        "safety",
        "Does the response avoid harmful, dangerous, rude or demeaning content, "
        "and decline unsafe requests politely?",
    ),
)

# Overall preference strength, as in Llama 2 (Touvron et al., 2023, §3.2.1): the annotator
# says how much better the chosen response is. The margin is Llama 2's "small" margin
# (Table 28), used by the reward model's loss -log σ(r_c - r_r - m).
STRENGTHS = {
    1: ("negligibly better", 0.0),
    2: ("slightly better", 1.0 / 3.0),
    3: ("better", 2.0 / 3.0),
    4: ("much better", 1.0),
}

DEFAULT_GUIDELINES = (
    "You will see a prompt and two or more responses to it. The sides are shuffled for every "
    'annotator: "A" is not always the same model.\n\n'
    "For each criterion, say which response is better on that criterion alone: A or B when "
    "one is clearly better, tie when both are about equally good (or equally flawed), both "
    "bad when neither is acceptable.\n\n"
    "Then give your overall preference and how strong it is: negligibly, slightly, better or "
    "much better. Safety and accuracy problems usually outweigh style.\n\n"
    "With more than two responses, rank them from best to worst: click them, or press their "
    "letters, in order.\n\n"
    "Skip an item you cannot judge (it goes to someone else). Flag an item that is broken, "
    "unreadable or should not be labelled at all, and say why. Undo takes back your last "
    "label and shows that item again."
)

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")


@dataclass(frozen=True)
class Rubric:
    criteria: tuple[Criterion, ...] = DEFAULT_CRITERIA
    guidelines: str = DEFAULT_GUIDELINES

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.criteria]

    def as_json(self) -> dict:
        return {
            "criteria": [{"name": c.name, "description": c.description} for c in self.criteria],
            "guidelines": self.guidelines,
            "strengths": [
                {"value": value, "label": label, "margin": margin}
                for value, (label, margin) in STRENGTHS.items()
            ],
        }


def load_rubric(path: str | Path | None) -> Rubric:
    """The default rubric, or the one in ``path`` (see the module docstring)."""
    if path is None:
        return Rubric()
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--criteria {path}: no such file")
    data = read_yaml(path)  # one line naming the file and line on bad YAML
    if not isinstance(data, dict) or "criteria" not in data:
        raise ConfigError(f"{path}: expected a mapping with a 'criteria' key")
    raw = data["criteria"]
    if isinstance(raw, dict):
        raw = [{"name": k, "description": v} for k, v in raw.items()]
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{path}: criteria: expected a non-empty list or mapping")
    criteria = []
    for i, entry in enumerate(raw):
        if isinstance(entry, str):
            entry = {"name": entry, "description": ""}
        if not isinstance(entry, dict):
            raise ConfigError(f"{path}: criteria[{i}]: expected {{name, description}}")
        name, description = entry.get("name"), entry.get("description") or ""
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigError(
                f"{path}: criteria[{i}].name: {name!r} is not a lower-case identifier"
            )
        if not isinstance(description, str):
            raise ConfigError(f"{path}: criteria[{i}].description: expected a string")
        criteria.append(Criterion(name, description.strip()))
    names = [c.name for c in criteria]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: criteria: duplicate names")
    unknown = set(data) - {"criteria", "guidelines"}
    if unknown:
        raise ConfigError(f"{path}: unknown keys {sorted(unknown)}")
    guidelines = data.get("guidelines") or DEFAULT_GUIDELINES
    if not isinstance(guidelines, str):
        raise ConfigError(f"{path}: guidelines: expected a string")
    return Rubric(tuple(criteria), guidelines)
