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
pipeline's `output_dir` (a stage naming it depends on every earlier stage). Every stage's config
is checked before any stage runs: an unknown key, at the top, in a stage entry or in a stage's
config, is an error naming the nearest valid key, and so is a value out of range or one the
stage's own check (`Stage.check`: ppo, dpo, rm) refuses, a `${...}` that names no earlier
stage, or a data file (`.jsonl`, `.json`, `.parquet`, `.csv`) that neither exists nor comes
from an earlier stage (its directory, or a file it writes). Each stage needs a directory of its
own (`Stage.directory_key`: `output_dir`, init-model's `out`; by default `output_dir/NAME`):
two stages' directories may not overlap, and no stage may write a file another writes or holds.
A server (`serve`) cannot be a stage.

A stage is skipped when its digest is unchanged since it last completed and what it left in its
directory, and the files its config made it write elsewhere (`Stage.writes`: an `output` file
and what label writes beside it, the report's HTML), are still there
(`OUT/.pipeline.json` records them). The digest is taken when the
stage's turn comes (so it sees what earlier stages have just written) and covers its resolved
config (defaults included), the input files it names (their content), the local directories it
names (the names, sizes and modification times of their files, so a model re-created at the
same path counts as changed), the source of a `python:module:function` it names, and the run ids
of the earlier stages it reads (by `${NAME}`, `${root}` or a path into their directories): a
stage reruns whenever one of those ran again. Paths inside a stage directory of this pipeline
are left to that stage's run id; what a stage writes (`output*` keys) is not an input.

A stage that runs is either *resumed* or run *afresh*:
- resumed when it was interrupted (its marker says `running`) with the same digest: a stage with
  checkpoints gets `resume=true`; `label` continues from the judgments it wrote;
- afresh otherwise (first run, changed config or inputs, `--from`, or an interrupted run of
  another digest): the outputs of its previous run in its directory (those its marker recorded
  when it completed, and its checkpoints; all it left after a run that did not complete) are
  removed first, and a
  stage with an `overwrite` key gets `overwrite=true` (for outputs it keeps elsewhere), so no
  checkpoint, judgment or model of another configuration is reused. What a directory held
  before the pipeline first ran a stage in it (a user's data, say) is kept, and hashed as input.

`--from NAME` marks NAME and every stage after it as pending before it runs any, so a plain rerun
after an interruption finishes what `--from` started. A failing stage's error names the stage.
Stages that write no `config.yaml` of their own (generate, label, report, init-model) get one
from the pipeline in their directory, beside the marker.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import re
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhfkit.atomic_dirs import within
from rlhfkit.config import build, option, read_yaml, write_config
from rlhfkit.data.io import SUFFIXES
from rlhfkit.errors import ConfigError, RlhfkitError
from rlhfkit.training.run import console

MARKER = ".pipeline.json"
REFERENCE = re.compile(r"\$\{([A-Za-z0-9_\-]+)\}")
LEFTOVER = re.compile(r"\$\{[^}]*\}?")  # what is left of a `${...}` that is no reference
NAME = re.compile(r"[A-Za-z0-9_\-]+")  # a stage name, as `${NAME}` can name it


@dataclass
class PipelineConfig:
    """The pipeline file is a mapping with `output_dir` (default runs/pipeline) and `stages`, a
    list of entries with `name` (default: the stage), `stage` (the rlhfkit stage to run) and
    `config` (that stage's keys, nested or dotted; `${NAME}`, `${out}` and `${root}` name
    directories). Any other key is an error."""

    file: str = option("", "the pipeline YAML file (also accepted as the first argument)")
    from_stage: str = option("", "rerun this stage and every stage after it (alias: --from)")
    dry_run: bool = option(False, "print what would run or be skipped, run nothing")


@dataclass
class PipelineFile:
    """The top level of a pipeline file."""

    output_dir: str = option("runs/pipeline", "each stage writes to output_dir/NAME by default")
    stages: list[Any] = option([], "the stages, in order")


@dataclass
class StageEntry:
    """One entry of a pipeline file's `stages`."""

    name: str = option("", "unique name; ${NAME} is this stage's output directory")
    stage: str = option("", "the rlhfkit stage to run (sft, generate, rm, dpo, ...)")
    config: dict[str, Any] | None = option(None, "the stage's keys")


@dataclass
class PlannedStage:
    name: str
    stage: str
    values: dict[str, Any]
    out: Path
    config_digest: str  # the stage kind and its resolved config, defaults included
    upstream: tuple[str, ...]  # earlier stages whose outputs it reads
    digest: str = ""  # set by `stage_digest` just before the stage is decided
    writes: tuple[str, ...] = ()  # files its config writes outside its directory (Stage.writes)


def _unknown_reference(key: str, outputs: dict[str, Path], names: list[str]) -> ConfigError:
    """Why `${key}` names no earlier stage: a later stage, or no stage (the nearest named)."""
    if key in names:
        return ConfigError(
            f"${{{key}}}: stage {key!r} comes at or after this one; a stage reads only earlier "
            "stages (its own directory is ${out})"
        )
    known = ["out", "root", *outputs]
    near = difflib.get_close_matches(key, known, n=1)
    hint = f"; did you mean ${{{near[0]}}}?" if near else f" (earlier stages: {', '.join(outputs)})"
    return ConfigError(f"${{{key}}}: no stage is named {key!r}{hint}")


def _substitute(
    value: Any,
    outputs: dict[str, Path],
    current: Path,
    root: Path,
    used: set[str],
    names: Sequence[str] = (),
) -> Any:
    """`value` with `${NAME}`, `${out}` and `${root}` replaced by directories (`names`: every
    stage of the file, to tell a later stage from a typo); any other `${...}` is an error."""
    if isinstance(value, str):

        def replace(match: re.Match) -> str:
            key = match.group(1)
            if key == "out":
                return str(current)
            if key == "root":  # the pipeline's output_dir: everything so far is an input
                used.update(outputs)
                return str(root)
            if key not in outputs:
                raise _unknown_reference(key, outputs, list(names))
            used.add(key)
            return str(outputs[key])

        result = REFERENCE.sub(replace, value)
        if (left := LEFTOVER.search(result)) is not None:
            raise ConfigError(
                f"{left.group(0)}: not a stage reference (${{NAME}} names a stage's directory; "
                "letters, digits, '_' and '-')"
            )
        return result
    if isinstance(value, list):
        return [_substitute(v, outputs, current, root, used, names) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, outputs, current, root, used, names) for k, v in value.items()}
    return value


def directory_fingerprint(directory: Path) -> str:
    """sha256 of the relative name, size and modification time of every file under `directory`.

    No file is read, so it is cheap on model and data directories; it changes when a file is
    rewritten in place (same path, new weights), added or removed."""
    hasher = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        stat = path.stat()
        name = path.relative_to(directory).as_posix()
        hasher.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return hasher.hexdigest()


def _candidate_paths(value: str) -> list[Path]:
    """The paths a config string may name: itself, PATH in `NAME=PATH` (eval's `policies` and
    `reference`), or each PATH of `PATH,PATH,...` (a reward-model ensemble)."""
    candidates = [value]
    if "=" in value:
        candidates.append(value.split("=", 1)[1])
    if "," in value:
        candidates.extend(part.strip() for part in value.split(","))
    return [Path(c) for c in candidates if c]


def _python_source(value: str) -> Path | None:
    """The source of the module a `python:package.module:function` spec names (a package's
    directory), so editing a custom reward reruns the stages using it; None if not found."""
    from rlhfkit.user_code import find_user_module

    module = value[len("python:") :].rsplit(":", 1)[0]
    try:
        spec = find_user_module(module)
    except (ImportError, ValueError):
        return None  # the stage itself reports the bad spec
    if spec is None or not spec.origin or not Path(spec.origin).is_file():
        return None
    origin = Path(spec.origin)
    return origin.parent if origin.name == "__init__.py" else origin


def _strings(value: Any):
    """Every string in a config value (nested lists and mappings included)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)


def _keyed_strings(values: dict[str, Any], prefix: str = ""):
    """`(key, string)` for every string in a config's values; nested keys dotted."""
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _keyed_strings(value, f"{name}.")
        else:
            yield from ((name, text) for text in _strings(value))


def _input_values(values: dict[str, Any]) -> dict[str, Any]:
    """A stage's values less what it writes (`output`, `judgments_output`, `output_dir`): those
    are no inputs, even where they lie outside any stage directory and exist from a last run."""
    return {k: v for k, v in values.items() if not k.endswith("output") and k != "output_dir"}


def _check_inputs(stage: PlannedStage, earlier: list[PlannedStage], where: str) -> None:
    """Every data file (`.jsonl`, `.json`, `.parquet`, `.csv`) the stage reads exists, or an
    earlier stage makes it (a path in that stage's directory, or one of the files it writes):
    a typo in the last stage's data is an error before the first stage runs, not hours later.
    Models are left to the stage: a name that is no local directory may be a hub id."""
    made = [s.out.resolve() for s in earlier]
    written = {Path(p).resolve() for s in earlier for p in s.writes}
    for key, text in _keyed_strings(_input_values(stage.values)):
        if "://" in text or text.startswith("python:"):
            continue
        for path in _candidate_paths(text):
            if path.suffix.lower() not in SUFFIXES or path.exists():
                continue
            resolved = path.resolve()
            if resolved in written or any(within(resolved, d) for d in made):
                continue
            raise ConfigError(
                f"{where}: {key}: {path}: file not found, and no earlier stage writes it"
            )


def _referenced_stages(values: dict[str, Any], outputs: dict[str, Path]) -> set[str]:
    """Earlier stages whose directories the config names by a path, written out rather than as
    `${NAME}`: a path inside one reads that stage's outputs, a path holding some reads all."""
    dirs = {name: out.resolve() for name, out in outputs.items()}
    found = set()
    for text in _strings(values):
        for path in _candidate_paths(text):
            resolved = path.resolve()
            found.update(n for n, d in dirs.items() if within(resolved, d) or within(d, resolved))
    return found


def _input_digest(values: dict[str, Any], hasher, stage_dirs: list[Path], own: list[Path]) -> None:
    """Fold every existing input the config names into the hash: a file's content, a
    directory's `directory_fingerprint`, the source of a `python:module:function`.

    Paths inside a stage directory of this pipeline (the stage's own: its outputs; an earlier
    stage's: that stage's run stands for them) are left out: they may not exist yet when the
    pipeline is planned, and hashing them on a later run only would rerun a stage that did not
    change. So is a directory holding a stage directory (`${root}`). `own` are the entries that
    were in the stage's directory before it first ran (inputs of the user's, kept): hashed."""
    for text in _strings(values):
        paths = [p for p in _candidate_paths(text) if p.exists()]
        if text.startswith("python:") and (source := _python_source(text)) is not None:
            paths.append(source)
        for path in paths:
            resolved = path.resolve()
            kept = any(within(resolved, entry) for entry in own)
            if not kept and any(within(resolved, d) or within(d, resolved) for d in stage_dirs):
                continue
            if path.is_file():
                hasher.update(path.read_bytes())
            elif path.is_dir():
                hasher.update(directory_fingerprint(path).encode())


def _read_spec(path: Path) -> PipelineFile:
    """The pipeline file's top level, keys and types checked."""
    if not path.is_file():
        raise ConfigError(f"pipeline: file {str(path)!r} not found")
    spec = read_yaml(path) or {}
    if not isinstance(spec, dict):
        raise ConfigError(f"{path}: expected a mapping with a list under 'stages'")
    try:
        top = build(PipelineFile, spec)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    if not top.stages:
        raise ConfigError(f"{path}: stages: expected a list of at least one stage")
    return top


def _read_entry(entry: Any, where: str) -> StageEntry:
    """One stage entry, keys and types checked (`where` names it in errors)."""
    if not isinstance(entry, dict) or "stage" not in entry:
        raise ConfigError(f"{where}: each stage needs 'stage' (and usually 'name', 'config')")
    label = f"{where} ({entry.get('name', entry['stage'])})"
    try:
        return build(StageEntry, entry)
    except ConfigError as err:
        raise ConfigError(f"{label}: {err}") from None


def _check_directory(out: Path, root: Path, others: dict[str, Path], where: str) -> None:
    """A stage's directory is its own: it may hold no other stage's, lie in none, and hold
    neither the pipeline's output_dir nor the working directory (a fresh run empties it)."""
    resolved = out.resolve()
    for name, other in others.items():
        if within(resolved, other.resolve()) or within(other.resolve(), resolved):
            raise ConfigError(
                f"{where}: output directory {out} overlaps stage {name!r}'s ({other}); "
                "give each stage a directory of its own"
            )
    for held, what in ((root, "the pipeline's output_dir"), (Path.cwd(), "the working directory")):
        if within(held.resolve(), resolved):
            raise ConfigError(f"{where}: output directory {out} holds {what}; choose another")


def _stage_names(entries: list[Any]) -> list[str]:
    """Every stage's name as given (or its kind), for telling a later stage from a typo."""
    return [
        str(e.get("name") or e.get("stage"))
        for e in entries
        if isinstance(e, dict) and "stage" in e
    ]


def _check_writes(stage: PlannedStage, earlier: list[PlannedStage], where: str) -> None:
    """What a stage writes outside its directory may be neither another stage's file nor lie in
    another stage's directory (whose fresh run would remove it), and its directory may hold no
    earlier stage's file: else one stage would silently overwrite another's output."""
    own = stage.out.resolve()
    mine = [Path(p).resolve() for p in stage.writes if not within(Path(p).resolve(), own)]
    for other in earlier:
        theirs_dir = other.out.resolve()
        theirs = [Path(p).resolve() for p in other.writes]
        for path in mine:
            if within(path, theirs_dir) or path in theirs:
                raise ConfigError(
                    f"{where}: writes {path}, which stage {other.name!r} writes or holds; give "
                    "each stage's output a path of its own"
                )
        for path in theirs:
            if not within(path, theirs_dir) and within(path, own):
                raise ConfigError(
                    f"{where}: its directory {stage.out} holds {path}, which stage "
                    f"{other.name!r} writes; give each stage's output a path of its own"
                )


def plan(path: Path) -> list[PlannedStage]:
    """Every stage of the pipeline file at `path`, its config resolved and validated, with its
    output directory and digest; runs nothing."""
    from rlhfkit.recipes.stages import STAGES, load_target

    top = _read_spec(path)
    root = Path(top.output_dir)
    names = _stage_names(top.stages)
    outputs: dict[str, Path] = {}
    planned = []
    for index, raw in enumerate(top.stages, start=1):
        where = f"{path}: stages[{index}]"
        entry = _read_entry(raw, where)
        kind = entry.stage
        if kind not in STAGES or STAGES[kind].config is None or not STAGES[kind].in_pipeline:
            raise ConfigError(f"{where}: stage {kind!r} cannot run in a pipeline")
        name = entry.name or kind
        if name in ("out", "root"):
            raise ConfigError(f"{where}: {name!r} is reserved (${{{name}}}); rename the stage")
        if not NAME.fullmatch(name):
            raise ConfigError(
                f"{where}: name {name!r}: use letters, digits, '_' and '-' only (as "
                "${NAME} names it)"
            )
        if name in outputs:
            raise ConfigError(f"{where}: stage name {name!r} is used twice")
        where = f"{where} ({name})"
        values = dict(entry.config or {})
        used: set[str] = set()
        out = root / name
        directory_key = STAGES[kind].directory_key
        given = values.get(directory_key)
        if given and given != "${out}":  # `out: ${out}` (init-model's) is the default
            if "${out}" in str(given):
                raise ConfigError(f"{where}: {directory_key}: cannot name ${{out}} (itself)")
            out = Path(_resolved(directory_key, given, outputs, out, root, used, names, where))
        _check_directory(out, root, outputs, where)
        values = {
            key: _resolved(key, value, outputs, out, root, used, names, where)
            for key, value in values.items()
        }
        used |= _referenced_stages(values, outputs)
        cls = _config_class(kind)
        if directory_key in _field_names(cls):
            values[directory_key] = str(out)
        try:
            config = build(cls, _nest(values))
            if STAGES[kind].check:  # the stage's own rules, before any stage runs
                load_target(STAGES[kind].check)(config)
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from None
        # The resolved config (defaults included; `dpo.beta: 0.1` and `dpo: {beta: 0.1}` alike),
        # so a default that changes between versions reruns the stage rather than resuming it.
        resolved = json.dumps([kind, dataclasses.asdict(config)], sort_keys=True, default=str)
        writes = load_target(STAGES[kind].writes)(config) if STAGES[kind].writes else []
        outputs[name] = out
        stage = PlannedStage(
            name, kind, values, out, hashlib.sha256(resolved.encode()).hexdigest(),
            tuple(sorted(used)), writes=tuple(str(path) for path in writes),
        )  # fmt: skip
        _check_writes(stage, planned, where)
        _check_inputs(stage, planned, where)
        planned.append(stage)
        # Provisional (the run recomputes it when the stage's turn comes): earlier stages stand
        # for their runs by their digests.
        stage.digest = stage_digest(stage, planned, {s.name: s.digest for s in planned})
    return planned


def _resolved(
    key: str,
    value: Any,
    outputs: dict[str, Path],
    out: Path,
    root: Path,
    used: set[str],
    names: list[str],
    where: str,
) -> Any:
    """`_substitute` for one key of a stage's config, its errors naming the stage and key."""
    try:
        return _substitute(value, outputs, out, root, used, names)
    except ConfigError as err:
        raise ConfigError(f"{where}: {key}: {err}") from None


def _kept_entries(out: Path) -> list[str]:
    """What of the user's `out` held before the pipeline first ran a stage in it: kept by a
    fresh run's clearing and hashed as inputs. A marked directory says (its marker's `kept`);
    an unmarked one holds only such entries."""
    record = _read_marker(out)
    if record is None:
        return _outputs(out) if out.is_dir() else []
    kept = record.get("kept", [])
    return [k for k in kept if isinstance(k, str)] if isinstance(kept, list) else []


def stage_digest(stage: PlannedStage, planned: list[PlannedStage], runs: dict[str, str]) -> str:
    """The stage's digest, taken just before it is decided (inputs an earlier stage of this run
    wrote are read as they are now): its resolved config, the content of the inputs it names and
    the run ids (`runs`) of the earlier stages it reads, so it reruns whenever one of them ran
    again, even to the same digest. `planned`: the pipeline's stages up to this one or further."""
    upto = next(i for i, s in enumerate(planned) if s is stage)
    hasher = hashlib.sha256(stage.config_digest.encode())
    stage_dirs = [s.out.resolve() for s in planned[: upto + 1]]
    own = [(stage.out / entry).resolve() for entry in _kept_entries(stage.out)]
    _input_digest(_input_values(stage.values), hasher, stage_dirs, own)
    for ref in stage.upstream:
        hasher.update(f"{ref}={runs[ref]}".encode())
    return hasher.hexdigest()


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
    from rlhfkit.recipes.stages import STAGES, load_target

    return load_target(STAGES[kind].config)


def _field_names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def _read_marker(out: Path) -> dict[str, Any] | None:
    """The stage's marker, None where no pipeline run has marked `out` ({} if unreadable)."""
    marker = out / MARKER
    if not marker.is_file():
        return None
    try:
        record = json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return record if isinstance(record, dict) else {}


def _outputs(out: Path) -> list[str]:
    """The entries a stage left in its output directory (top level), leaving out the marker and
    `checkpoints` (resumable state, not a result: removing it to free disk reruns nothing)."""
    return sorted(
        p.name for p in out.iterdir() if not p.name.startswith(MARKER) and p.name != "checkpoints"
    )


def _written_files(stage: PlannedStage) -> list[str]:
    """The files the stage wrote outside its own directory (`Stage.writes`: the report's
    ``${root}/report.html``, label's JSONL and the files beside it): those that exist now."""
    own = stage.out.resolve()
    return sorted(
        path
        for path in stage.writes
        if Path(path).is_file() and not within(Path(path).resolve(), own)
    )


def _write_marker(stage: PlannedStage, status: str, run_id: str = "") -> None:
    kept = _kept_entries(stage.out)
    stage.out.mkdir(parents=True, exist_ok=True)
    record = {"digest": stage.digest, "status": status, "stage": stage.stage, "kept": kept}
    if status == "done":
        record["outputs"] = _outputs(stage.out)
        record["files"] = _written_files(stage)
        record["run_id"] = run_id
    tmp = stage.out / f"{MARKER}.tmp"
    tmp.write_text(json.dumps(record))
    tmp.replace(stage.out / MARKER)


def decide(
    record: dict[str, Any] | None, digest: str, forced: bool, present: list[str] | None = None
) -> str:
    """What to do with a stage: `skip` (completed with this digest, every output it left is
    still `present` and every file it wrote elsewhere, the marker's `files`, still exists),
    `resume` (interrupted with this digest) or `fresh` (anything else, and whatever `--from`
    forces)."""
    if forced or record is None or record.get("digest") != digest:
        return "fresh"
    if record.get("status") == "done" and (
        not set(record.get("outputs", [])) <= set(present or [])
        or not all(Path(f).is_file() for f in record.get("files", []))
    ):
        return "fresh"  # completed, but some of what it wrote has been removed since
    return {"done": "skip", "running": "resume"}.get(record.get("status"), "fresh")


def _clear(directory: Path, keep: list[str], outputs: list[str] | None = None) -> None:
    """Remove what the stage's previous run left inside `directory`: the `outputs` its marker
    recorded when it completed, and its checkpoints, or, after a run that did not complete (no
    record of what it wrote), everything; never the entries `keep` (the user's, there before
    the pipeline first ran a stage in it) nor the marker. The directory itself stays."""
    remove = None if outputs is None else {*outputs, "checkpoints"}
    for entry in directory.iterdir():
        if entry.name in keep or entry.name == MARKER:
            continue
        if remove is not None and entry.name not in remove:
            continue  # put there since the last run completed: not the pipeline's to remove
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _mtime(path: Path) -> int | None:
    return path.stat().st_mtime_ns if path.is_file() else None


def _run_stage(stage: PlannedStage, values: dict[str, Any]) -> None:
    """Run one stage; write its config.yaml if the stage wrote none; name it in any error."""
    from rlhfkit.recipes.stages import STAGES, load_target

    config_file = stage.out / "config.yaml"
    before = _mtime(config_file)
    try:
        config = build(_config_class(stage.stage), _nest(values))
        load_target(STAGES[stage.stage].entry)(config)
    except RlhfkitError as err:
        # Prefixed in place so the error keeps its type (DataError's fields included).
        err.args = (f"stage {stage.name} ({stage.stage}): {err}",)
        raise
    if _mtime(config_file) in (None, before):
        write_config(stage.out, stage.stage, config)


def run(config: PipelineConfig) -> int:
    if not config.file:
        raise ConfigError("file: give the pipeline file (rlhfkit pipeline FILE.yaml)")
    stages = plan(Path(config.file))
    names = [s.name for s in stages]
    if config.from_stage and config.from_stage not in names:
        raise ConfigError(
            f"from_stage: no stage named {config.from_stage!r} (stages: {', '.join(names)})"
        )
    first_forced = names.index(config.from_stage) if config.from_stage else len(stages)
    if not config.dry_run:
        # Before anything runs: an interrupted --from run leaves these to a plain rerun.
        for stage in stages[first_forced:]:
            if _read_marker(stage.out) is not None:
                _write_marker(stage, "pending")
    runs: dict[str, str] = {}  # stage name -> id of the run its outputs are from
    for index, stage in enumerate(stages):
        stage.digest = stage_digest(stage, stages, runs)
        record = _read_marker(stage.out)
        present = _outputs(stage.out) if stage.out.is_dir() else []
        action = decide(record, stage.digest, forced=index >= first_forced, present=present)
        if action == "skip":
            runs[stage.name] = str(record.get("run_id") or record.get("digest"))
            console.print(
                f"[dim]skip[/] {stage.name} ({stage.stage}): unchanged since it completed"
            )
            continue
        runs[stage.name] = uuid.uuid4().hex
        fields = _field_names(_config_class(stage.stage))
        values = dict(stage.values)
        note = ""
        resuming = action == "resume" and "resume" in fields
        if resuming:
            values["resume"], note = True, " — resuming"
        elif action == "fresh":
            if "overwrite" in fields:
                values["overwrite"] = True
            if record is not None and record.get("status") == "running":
                note = " — interrupted with another config or inputs: starting afresh"
            elif (
                record is not None
                and record.get("status") == "done"
                and record.get("digest") == stage.digest
                and index < first_forced
            ):
                note = " — some of its outputs were removed: running again"
        if config.dry_run:
            verb = "would resume" if resuming else "would run"
            console.print(f"{verb} {stage.name} ({stage.stage}){note}")
            continue
        console.rule(f"[bold]{stage.name}[/] ({stage.stage}){note}")
        if action == "fresh" and record is not None:
            recorded = record.get("outputs") if record.get("status") == "done" else None
            _clear(stage.out, keep=_kept_entries(stage.out), outputs=recorded)
            console.print(f"[dim]removed the previous run's outputs in {stage.out}[/]")
        _write_marker(stage, "running")
        _run_stage(stage, values)
        _write_marker(stage, "done", run_id=runs[stage.name])
    return 0
