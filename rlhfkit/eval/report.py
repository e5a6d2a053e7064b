"""A self-contained HTML report (plots inlined as PNG data URIs; opens with no network).

Inputs under one runs directory:
- `*/metrics.jsonl` of every stage → training curves;
- `eval.json` (written by `rlhfkit eval` / the demo), at the root or in one stage's directory:
  `{"policies": {name: {"gold_reward", "proxy_reward", "kl", ...}},
    "best_of_n": [{"n", "kl", "proxy_reward", "gold_reward"}],
    "samples": [{"prompt", "responses": {policy: text}}],
    "warnings": [{"check", "message"}],
    "curves": {run: {"step": [...], "proxy": [...], "gold": [...], "kl": [...],
                     "disagreement": [...]}}}`
  (`step`: the logged optimizer steps; `gold` only where a gold reward was logged,
  `disagreement` only where a reward-model ensemble was; a missing value is null).
Model text is always escaped: a response holding `<script>` shows as characters.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from rlhfkit.data.io import read_log  # noqa: E402
from rlhfkit.errors import ConfigError  # noqa: E402

CURVE_KEYS = (
    "loss", "eval_loss", "eval_accuracy", "eval_reward_accuracy", "score_mean", "reward_mean",
    "gold_reward_mean", "kl", "kl_coef", "rewards/margins", "reward_margin",
    "reward_disagreement",
)  # fmt: skip


# Leading columns of the final-numbers table, in this order; other keys follow alphabetically.
TABLE_FIRST = (
    "gold_reward", "proxy_reward", "kl", "win_rate_gold", "win_rate_proxy", "length",
    "proxy_length_correlation",
)  # fmt: skip


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def training_curves(root: Path) -> list[tuple[str, str]]:
    """(title, png) per stage directory that logged metrics."""
    figures = []
    for metrics in sorted(root.glob("**/metrics.jsonl")):
        if "checkpoints" in metrics.parts:
            continue
        rows = read_log(metrics)
        keys = [k for k in CURVE_KEYS if any(k in r for r in rows)]
        if not rows or not keys:
            continue
        fig, axes = plt.subplots(
            1, len(keys), figsize=(3.2 * len(keys), 2.8), squeeze=False, layout="constrained"
        )  # constrained: the run's title sits above the panels' titles, not on them
        for ax, key in zip(axes[0], keys, strict=True):
            points = [
                (r["step"], r[key]) for r in rows if key in r and isinstance(r[key], (int, float))
            ]
            ax.plot([p[0] for p in points], [p[1] for p in points], marker=".", linewidth=1)
            ax.set_title(key, fontsize=9)
            ax.set_xlabel("step", fontsize=8)
            ax.tick_params(labelsize=7)
        fig.suptitle(str(metrics.parent.relative_to(root)), fontsize=10)
        figures.append((str(metrics.parent.relative_to(root)), _png(fig)))
    return figures


def needs_log_kl_axis(kls: list[float]) -> bool:
    """True when the largest KL is over 10x the next (and over 10 nats): one far-off policy, such
    as an unconstrained run at hundreds of nats, would squash the others against a linear axis."""
    ordered = sorted(max(kl, 0.0) for kl in kls)
    return len(ordered) > 1 and ordered[-1] > 10 * max(ordered[-2], 1.0)


#: Steps averaged along an RL run's path on the frontier plot.
PATH_SMOOTHING = 5


def moving_average(values: list[float], width: int) -> list[float]:
    """Trailing mean over the last `width` values (fewer at the start): m_i = mean(v_{i-w+1..i})."""
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value - (values[i - width] if i >= width else 0.0)
        out.append(total / min(i + 1, width))
    return out


def training_paths(
    evaluation: dict, *, smooth: int = 1
) -> dict[str, tuple[list[float], list[float]]]:
    """(KL, gold) along each RL run's training, from `evaluation["curves"]`: the logged steps
    where both were measured (on the run's own rollouts, at its sampling temperature), each a
    `smooth`-step trailing mean (one rollout batch's gold is noisy)."""
    paths = {}
    for name, curve in evaluation.get("curves", {}).items():
        pairs = [
            (kl, gold)
            for kl, gold in zip(curve.get("kl", []), curve.get("gold", []), strict=False)
            if kl is not None and gold is not None
        ]
        if len(pairs) > 1:
            kls, golds = [kl for kl, _ in pairs], [gold for _, gold in pairs]
            paths[name] = (moving_average(kls, smooth), moving_average(golds, smooth))
    return paths


def frontier_plot(evaluation: dict) -> str | None:
    """Gold reward against KL for every policy, with the best-of-n curve and each RL run's path
    through training (DPO paper, Fig. 2: a method's frontier is the reward it reaches at each KL).
    """
    policies = evaluation.get("policies", {})
    points = [
        (name, p)
        for name, p in policies.items()
        if p.get("kl") is not None and p.get("gold_reward") is not None
    ]
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for name, (kls, golds) in training_paths(evaluation, smooth=PATH_SMOOTHING).items():
        label = f"{name} during training ({PATH_SMOOTHING}-step mean)"
        ax.plot(kls, golds, "-", linewidth=1, alpha=0.5, label=label)
    bon = evaluation.get("best_of_n", [])
    if bon and "gold_reward" in bon[0]:
        ax.plot(
            [r["kl"] for r in bon],
            [r["gold_reward"] for r in bon],
            "k--",
            linewidth=1,
            label="best-of-n",
        )
    # One legend entry per point, not text beside it: policies near each other (PPO next to
    # best-of-16, a β sweep) would print their names over one another. Policies at the very
    # same point (one run listed under two names) share an entry.
    markers = "osD^vP*Xhp<>"
    for index, (point, names) in enumerate(_same_points(points).items()):
        ax.scatter(
            [point[0]], [point[1]], s=40, marker=markers[index % len(markers)],
            label=" = ".join(names), zorder=3,
        )  # fmt: skip
    if needs_log_kl_axis([p["kl"] for _, p in points]):  # a path ends near its policy's point
        ax.set_xscale("symlog", linthresh=1.0)  # linear up to 1 nat, logarithmic beyond
        ax.set_xlabel("KL to the reference (nats, log scale above 1)")
    else:
        ax.set_xlabel("KL to the reference (nats)")
    ax.set_ylabel("gold reward")
    ax.set_title("reward–KL frontier")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    return _png(fig)


def _same_points(points: list[tuple[str, dict]]) -> dict[tuple[float, float], list[str]]:
    """{(kl, gold): names} in first-seen order; names of policies at the same point together."""
    merged: dict[tuple[float, float], list[str]] = {}
    for name, p in points:
        key = (round(float(p["kl"]), 6), round(float(p["gold_reward"]), 6))
        merged.setdefault(key, []).append(name)
    return merged


def best_of_n_plot(evaluation: dict) -> str | None:
    """Gold and proxy reward of best-of-n against sqrt(KL) (Gao et al. 2022, Fig. 1)."""
    bon = evaluation.get("best_of_n", [])
    if not bon:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    x = [math.sqrt(r["kl"]) for r in bon]
    ax.plot(x, [r["proxy_reward"] for r in bon], marker="o", label="proxy (reward model)")
    if "gold_reward" in bon[0]:
        ax.plot(x, [r["gold_reward"] for r in bon], marker="s", label="gold")
    for r, xi in zip(bon, x, strict=True):
        ax.annotate(
            f"n={r['n']}",
            (xi, r["proxy_reward"]),
            fontsize=7,
            xytext=(2, 4),
            textcoords="offset points",
        )
    ax.set_xlabel("sqrt(KL)")
    ax.set_ylabel("reward")
    ax.set_title("best-of-n")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def curve_points(curve: dict, key: str) -> tuple[list, list]:
    """(steps, values) of `curve[key]` where a value was logged (null and NaN left out).

    Steps are the curve's logged `step`s; a curve without them (an eval.json written before
    they were kept) falls back to the row index.
    """
    values = curve.get(key) or []
    steps = curve.get("step") or list(range(len(values)))
    points = [
        (step, value)
        for step, value in zip(steps, values, strict=False)
        if isinstance(value, (int, float)) and math.isfinite(value)
    ]
    return [step for step, _ in points], [value for _, value in points]


def hacking_plot(evaluation: dict) -> str | None:
    """Proxy and gold reward over training steps for RL runs (over-optimisation)."""
    curves = evaluation.get("curves", {})
    if not curves:
        return None
    fig, axes = plt.subplots(1, len(curves), figsize=(4.5 * len(curves), 3.2), squeeze=False)
    for ax, (name, curve) in zip(axes[0], curves.items(), strict=True):
        for key in ("proxy", "gold"):
            steps, values = curve_points(curve, key)
            if values:
                ax.plot(steps, values, label=key)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step" if curve.get("step") else "logged row")
        if ax.lines:
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    return _png(fig)


def _table(rows: list[list[str]], header: list[str]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    table = f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    return f'<div class="scroll">{table}</div>'  # wide tables scroll inside the page


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return html.escape(str(value)) if value is not None else "–"


STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.6em} h2{margin-top:1.6em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;margin:.5em 0;font-size:.9em}
td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#f3f3f3} img{max-width:100%} .scroll{overflow-x:auto}
.warn{background:#fff4e5;border-left:4px solid #f0a030;padding:.5em 1em;margin:.4em 0}
.sample{white-space:pre-wrap;font-family:ui-monospace,monospace;font-size:.85em}
"""


def find_evaluation(root: Path) -> Path | None:
    """`root/eval.json` (the demo's layout), else the newest `root/*/eval.json` (a pipeline's
    eval stage writes into its own directory under the pipeline's root)."""
    if (root / "eval.json").is_file():
        return root / "eval.json"
    found = sorted(root.glob("*/eval.json"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def _read_object(path: Path | None) -> dict:
    """The JSON object in `path` ({} when there is none), or a one-line error naming the file."""
    if path is None or not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        problem = f"not valid JSON ({err}); rerun the stage that wrote it"
        raise ConfigError(f"{path}: {problem}") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def render_report(root: Path, title: str = "rlhfkit report") -> str:
    evaluation = _read_object(find_evaluation(root))
    summary = _read_object(root / "summary.json")
    parts = [
        f"<h1>{html.escape(title)}</h1>",
        f"<p>runs: <code>{html.escape(str(root))}</code></p>",
    ]
    warnings = evaluation.get("warnings", [])
    if warnings:
        parts.append("<h2>Reward-hacking diagnostics</h2>")
        parts += [f'<div class="warn">{html.escape(w["message"])}</div>' for w in warnings]
    policies = evaluation.get("policies", {})
    if policies:
        present = {k for p in policies.values() for k in p if not isinstance(p[k], (dict, list))}
        # The numbers the page is about first (they stay in view when the table scrolls).
        keys = [k for k in TABLE_FIRST if k in present] + sorted(present - set(TABLE_FIRST))
        rows = [
            [html.escape(name)] + [_fmt(p.get(k)) for k in keys] for name, p in policies.items()
        ]
        parts += ["<h2>Final numbers</h2>", _table(rows, ["policy", *keys])]
    headline = {
        k: v for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    if headline:
        parts += [
            "<h2>Summary</h2>",
            _table([[html.escape(k), _fmt(v)] for k, v in headline.items()], ["key", "value"]),
        ]
    for heading, image in (
        ("Reward–KL frontier", frontier_plot(evaluation)),
        ("Best-of-n: gold and proxy reward against sqrt(KL)", best_of_n_plot(evaluation)),
        ("Over-optimisation: proxy and gold reward during training", hacking_plot(evaluation)),
    ):
        if image:
            parts += [f"<h2>{heading}</h2>", f'<img alt="{html.escape(heading)}" src="{image}">']
    curves = training_curves(root)
    if curves:
        parts.append("<h2>Training curves</h2>")
        parts += [f'<img alt="{html.escape(name)}" src="{png}">' for name, png in curves]
    samples = evaluation.get("samples", [])
    if samples:
        names = list(samples[0]["responses"])
        rows = [
            [f'<div class="sample">{html.escape(str(s.get("prompt") or ""))}</div>']
            + [
                f'<div class="sample">{html.escape(str(s["responses"].get(n) or ""))}</div>'
                for n in names
            ]
            for s in samples
        ]
        parts += ["<h2>Samples before and after alignment</h2>", _table(rows, ["prompt", *names])]
    body = "\n".join(parts)
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>"
        f"<body>{body}</body></html>"
    )


def write_report(root: Path, output: Path | None = None, title: str = "rlhfkit report") -> Path:
    output = output or root / "report.html"
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp")
    tmp.write_text(render_report(root, title), encoding="utf-8")
    tmp.replace(output)
    return output
