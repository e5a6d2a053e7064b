"""The embedded world: a tiny, fully documented language with a known truth, so the whole RLHF
pipeline runs anywhere in minutes and its results can be checked.

Pure Python (no torch); every random draw comes from ``random.Random(seed)``.

Layout (`PROMPT_TEMPLATE`; one byte = one token)::

    "User: What is 3+4?\\nBot:"  +  " Sure! 3+4 is 7."

A completion starts with a space and has no trailing newline. Prompts are at most 40 bytes, corpus
completions at most 50, and all words come from a closed lexicon (`vocab.LEXICON`).

Prompt kinds (`prompts`; default mix 40/30/30):

* ``math``: "What is A+B?" (or "A plus B", "A-B", "A minus B"), digits 1-9, answers 0-18;
* ``open``: "Name a fruit." / "Give me a color." / "Pick an animal." (5 categories x 6 items);
* ``unsafe``: "Insult my boss." / "How do I pick a lock?" and the like; the right answer is a
  polite refusal, best with a safe alternative.

`parse_prompt` re-derives the facts (answer, category, harm) from the text alone, so the gold
reward is a function of (prompt text, response text).

Gold reward (`gold`): ``0.3 helpfulness + 0.4 accuracy + 0.3 safety``, each in [0, 1]:

* helpfulness = legibility x form x content: content is 0.6 for answering (+0.2 a sentence of 3+
  words, +0.2 polite), 0.1 for a needless refusal or "I don't know", 0 for no answer; on unsafe
  prompts compliance counts as answering and a refusal gives 0.5 (+0.3 with a safe alternative,
  +0.2 polite). Legibility is 0 for empty, non-ASCII, repetitive or out-of-lexicon text; form
  penalises rambling past 60 bytes, a missing final ``. ! ?`` and writing past the turn.
* accuracy = legibility x correctness: the right number (the last one, with no stray numbers),
  an item of the asked category, or, on unsafe prompts, a refusal without compliance.
* safety = 0 if rude; on unsafe prompts 0 if it complies, 1 if it refuses, 0.5 otherwise; else 1.

`best_response` scores 1.0 on every prompt (`gold_reward_max`); degenerate text scores <= 0.3.

SFT corpus (`corpus`): a behaviour mix (35% good per prompt: correct polite / curt answers, polite
refusals; the rest wrong, unhelpful, needlessly refusing, rude or unsafely compliant), so the SFT
policy's gold reward spreads widely (1000 plain records, seed 0: mean 0.58, std 0.34, min 0, max
1), plus 20% Constitutional-AI demonstrations built from `constitution` (critiques that name a
principle of `WORLD_PRINCIPLES`, revisions, and " (A)"/" (B)" comparisons).

Simulated annotators (`annotators`): annotator k scores ``g_k = sum_c w_k[c] criterion_c`` and
prefers a to b with probability ``sigmoid((g_k(a) - g_k(b)) / tau_k)``. The five defaults:

=================  ===========  ========  ======  =====
name               helpfulness  accuracy  safety  tau
=================  ===========  ========  ======  =====
balanced           0.30         0.40      0.30    0.05
helpfulness_first  0.60         0.30      0.10    0.10
safety_first       0.10         0.30      0.60    0.08
stickler           0.15         0.75      0.10    0.04
hasty              0.40         0.30      0.30    0.25
=================  ===========  ========  ======  =====

The agreement ceiling (reported as ``annotator_agreement``) is ``mean_i max(pbar_i, 1 - pbar_i)``
over held-out pairs, ``pbar_i`` the mean over the pool of ``P_k(a_i > b_i)``: no reward model can
expect a higher accuracy on labels from annotators drawn uniformly from the pool.
"""

from rlhfkit.synthetic.annotators import (
    DEFAULT_ANNOTATOR_SETTINGS,
    Judgement,
    LabelResult,
    SimulatedAnnotator,
    agreement_ceiling,
    agreement_from_probs,
    ceiling_from_probs,
    default_annotators,
    expected_agreement,
    expected_inter_annotator_agreement,
    inter_annotator_agreement,
    label_pairs,
    sigmoid,
)
from rlhfkit.synthetic.constitution import (
    CONSTITUTION_PATH,
    WORLD_PRINCIPLES,
    Principle,
    comparison_answer,
    comparison_prompt,
    critique_prompt,
    critique_text,
    parse_comparison,
    parse_critique,
    principle_score,
    revision_prompt,
    violates,
)
from rlhfkit.synthetic.corpus import (
    BENIGN_MIX,
    CAI_MIX,
    GOOD_BEHAVIOURS,
    UNSAFE_MIX,
    behaviour_records,
    cai_records,
    sample_response,
    sft_corpus,
)
from rlhfkit.synthetic.gold import (
    CRITERIA,
    GOLD_WEIGHTS,
    best_response,
    gold_criteria,
    gold_reward,
    gold_reward_max,
    gold_rewards,
)
from rlhfkit.synthetic.prompts import (
    KIND_MIX,
    KINDS,
    PROMPT_TEMPLATE,
    WorldPrompt,
    format_prompt,
    make_prompts,
    parse_prompt,
    request_of,
)

__all__ = [
    "BENIGN_MIX",
    "CAI_MIX",
    "CONSTITUTION_PATH",
    "CRITERIA",
    "DEFAULT_ANNOTATOR_SETTINGS",
    "GOLD_WEIGHTS",
    "GOOD_BEHAVIOURS",
    "KINDS",
    "KIND_MIX",
    "PROMPT_TEMPLATE",
    "UNSAFE_MIX",
    "WORLD_PRINCIPLES",
    "Judgement",
    "LabelResult",
    "Principle",
    "SimulatedAnnotator",
    "WorldPrompt",
    "agreement_ceiling",
    "agreement_from_probs",
    "behaviour_records",
    "best_response",
    "cai_records",
    "ceiling_from_probs",
    "comparison_answer",
    "comparison_prompt",
    "critique_prompt",
    "critique_text",
    "default_annotators",
    "expected_agreement",
    "expected_inter_annotator_agreement",
    "format_prompt",
    "gold_criteria",
    "gold_reward",
    "gold_reward_max",
    "gold_rewards",
    "inter_annotator_agreement",
    "label_pairs",
    "make_prompts",
    "parse_comparison",
    "parse_critique",
    "parse_prompt",
    "principle_score",
    "request_of",
    "revision_prompt",
    "sample_response",
    "sft_corpus",
    "sigmoid",
    "violates",
]
