"""`rlhfkit pipeline FILE.yaml [--from STAGE]`: every stage from one file, resumable.

```yaml
output_dir: runs/pipeline          # each stage writes to output_dir/NAME unless it says otherwise
stages:
  - name: sft                      # unique name; ${sft} elsewhere is this stage's output dir
    stage: sft                     # any rlhfkit stage with a config (sft, generate, rm, dpo, ...)
    config: {model: runs/tiny, train_data: data/sft.jsonl, max_steps: 200}
  - name: pairs
    stage: generate
    config: {model: "${sft}/model", prompts: data/prompts.jsonl, n: 2, output: "${out}/pairs.jsonl"}
```

`${NAME}` is stage NAME's output directory, `${out}` the current stage's and `${root}` the
pipeline's `output_dir` (a stage naming it depends on every earlier stage). A stage is skipped
when its resolved config, the content of the input files it names and the hashes of the stages
it refers to are unchanged since it last completed (`OUT/.pipeline.json` records the hash).
`--from NAME` reruns NAME and everything after it. An interrupted stage that supports
checkpoints is rerun with `resume=true`, so it continues where it stopped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from rlhfkit.config import build, option
from rlhfkit.errors import ConfigError
from rlhfkit.training.run import console

MARKER = ".pipeline.json"
REFERENCE = re.compile(r"\$\{([A-Za-z0-9_\-]+)\}")


@dataclass
class PipelineConfig:
    file: str = option("", "the pipeline YAML file (also accepted as the first argument)")
    from_stage: str = option("", "rerun this stage and every stage after it (alias: --from)")
    dry_run: bool = option(False, "print what would run or be skipped, run nothing")


@dataclass
class PlannedStage:
    name: str
    stage: str
    values: dict[str, Any]
    out: Path
    digest: str


def _substitute(
    value: Any, outputs: dict[str, Path], current: Path, root: Path, used: set[str]
) -> Any:
    if isinstance(value, str):

        def replace(match: re.Match) -> str:
            key = match.group(1)
            if key == "out":
                return str(current)
            if key == "root":  # the pipeline's output_dir: everything so far is an input
                used.update(outputs)
                return str(root)
            if key not in outputs:
                raise ConfigError(f"pipeline: ${{{key}}} names no earlier stage")
            used.add(key)
            return str(outputs[key])

        return REFERENCE.sub(replace, value)
    if isinstance(value, list):
        return [_substitute(v, outputs, current, root, used) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, outputs, current, root, used) for k, v in value.items()}
    return value


def _file_digest(value: Any, hasher, stage_dirs: list[Path]) -> None:
    """Fold the content of every existing input file a config value names into the hash.

    Files inside a stage directory of this pipeline (the stage's own: its outputs; an earlier
    stage's: that stage's digest already stands for them) are left out: they may not exist yet
    when the pipeline is planned, and hashing them on a later run only would rerun a stage that
    did not change."""
    if isinstance(value, str) and value and Path(value).is_file():
        parents = Path(value).resolve().parents
        if not any(directory.resolve() in parents for directory in stage_dirs):
            hasher.update(Path(value).read_bytes())
    elif isinstance(value, list):
        for v in value:
            _file_digest(v, hasher, stage_dirs)
    elif isinstance(value, dict):
        for v in value.values():
            _file_digest(v, hasher, stage_dirs)


def plan(path: Path) -> list[PlannedStage]:
    from rlhfkit.cli import STAGES

    if not path.is_file():
        raise ConfigError(f"pipeline: file {str(path)!r} not found")
    try:
        spec = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("stages"), list):
        raise ConfigError(f"{path}: expected a mapping with a list under 'stages'")
    root = Path(spec.get("output_dir", "runs/pipeline"))
    outputs: dict[str, Path] = {}
    digests: dict[str, str] = {}
    planned = []
    for index, entry in enumerate(spec["stages"], start=1):
        where = f"{path}: stages[{index}]"
        if not isinstance(entry, dict) or "stage" not in entry:
            raise ConfigError(f"{where}: each stage needs 'stage' (and usually 'name', 'config')")
        kind = entry["stage"]
        if kind not in STAGES or STAGES[kind].config is None or kind in ("pipeline", "demo"):
            raise ConfigError(f"{where}: stage {kind!r} cannot run in a pipeline")
        name = str(entry.get("name", kind))
        if name in ("out", "root"):
            raise ConfigError(f"{where}: {name!r} is reserved (${{{name}}}); rename the stage")
        if name in outputs:
            raise ConfigError(f"{where}: stage name {name!r} is used twice")
        values = dict(entry.get("config") or {})
        out = Path(values.get("output_dir") or root / name)
        used: set[str] = set()
        values = _substitute(values, outputs, out, root, used)
        cls = _config_class(kind)
        if "output_dir" in {f.name for f in dataclasses.fields(cls)}:
            values["output_dir"] = str(out)
        try:
            build(cls, _nest(values))
        except ConfigError as err:
            raise ConfigError(f"{where} ({name}): {err}") from None
        hasher = hashlib.sha256(json.dumps([kind, values], sort_keys=True, default=str).encode())
        _file_digest(values, hasher, [out, *outputs.values()])
        for ref in sorted(used):
            hasher.update(digests[ref].encode())
        outputs[name], digests[name] = out, hasher.hexdigest()
        planned.append(PlannedStage(name, kind, values, out, digests[name]))
    return planned


def _nest(values: dict[str, Any]) -> dict[str, Any]:
    """Allow dotted keys (`dpo.beta: 0.1`) as well as nested mappings in a stage's config."""
    tree: dict[str, Any] = {}
    for key, value in values.items():
        node = tree
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        if isinstance(value, dict) and isinstance(node.get(parts[-1]), dict):
            node[parts[-1]].update(value)
        else:
            node[parts[-1]] = value
    return tree


def _config_class(kind: str):
    from rlhfkit.cli import STAGES, _load

    return _load(STAGES[kind].config)


def _completed(stage: PlannedStage) -> bool:
    marker = stage.out / MARKER
    if not marker.is_file():
        return False
    record = json.loads(marker.read_text())
    return record.get("digest") == stage.digest and record.get("status") == "done"


def _write_marker(stage: PlannedStage, status: str) -> None:
    stage.out.mkdir(parents=True, exist_ok=True)
    tmp = stage.out / f"{MARKER}.tmp"
    tmp.write_text(json.dumps({"digest": stage.digest, "status": status, "stage": stage.stage}))
    tmp.replace(stage.out / MARKER)


def run(config: PipelineConfig) -> int:
    from rlhfkit.cli import STAGES, _load

    if not config.file:
        raise ConfigError("file: give the pipeline file (rlhfkit pipeline FILE.yaml)")
    stages = plan(Path(config.file))
    names = [s.name for s in stages]
    if config.from_stage and config.from_stage not in names:
        raise ConfigError(
            f"from_stage: no stage named {config.from_stage!r} (stages: {', '.join(names)})"
        )
    forced = False
    for stage in stages:
        forced = forced or stage.name == config.from_stage
        if not forced and _completed(stage):
            console.print(
                f"[dim]skip[/] {stage.name} ({stage.stage}): unchanged since it completed"
            )
            continue
        marker = stage.out / MARKER
        interrupted = marker.is_file() and json.loads(marker.read_text()).get("status") == "running"
        values = dict(stage.values)
        cls = _config_class(stage.stage)
        if interrupted and not forced and "resume" in {f.name for f in dataclasses.fields(cls)}:
            values["resume"] = True
        console.rule(
            f"[bold]{stage.name}[/] ({stage.stage})"
            + (" — resuming" if values.get("resume") else "")
        )
        if config.dry_run:
            continue
        _write_marker(stage, "running")
        _load(STAGES[stage.stage].entry)(build(cls, _nest(values)))
        _write_marker(stage, "done")
    return 0
