"""The reward model learns the simulated annotators' preferences in the embedded world.

A small, fast version of `benchmarks/rm_world_accuracy.py` (which reports the full number):
a fresh tiny model trained on a few hundred labelled pairs must beat chance clearly on held-out
pairs, and cannot beat the annotators' agreement ceiling by more than sampling noise.
"""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _world_module():
    spec = importlib.util.spec_from_file_location(
        "rm_world_accuracy", ROOT / "benchmarks" / "rm_world_accuracy.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rm_learns_annotator_preferences(tmp_path):
    result = _world_module().measure(
        train_prompts=300,
        eval_prompts=150,
        epochs=2,
        learning_rate=2e-3,
        batch_size=16,
        workdir=str(tmp_path),
    )
    ceiling, accuracy = result["annotator_agreement"], result["eval_accuracy"]
    assert 0.75 < ceiling < 1.0
    assert accuracy > 0.6, result
    # A held-out estimate from ~150 pairs; 3 standard errors above the ceiling is not noise.
    assert accuracy < ceiling + 3 * (0.25 / result["eval_pairs"]) ** 0.5, result
