"""Typed configuration: one dataclass per stage, a YAML file plus dotted `key=value` overrides.

`rlhfkit STAGE --config run.yaml dpo.beta=0.05 lora.r=8` loads the YAML, applies the overrides
(values parsed as YAML scalars: `true`, `0.05`, `[a, b]`), and builds the stage's dataclass with
type checks. An unknown key is an error that suggests the nearest valid one; `--help` lists every
key with its type, default and meaning (the `help` metadata below).

Ranges and allowed values are declared on the option and checked when the config is built, before
any model loads, with a one-line error (`batch_size: must be >= 1, got 0`):

    batch_size: int = option(8, "examples per micro-batch", minimum=1)
    top_p: float = option(1.0, "nucleus mass", exclusive_minimum=0, maximum=1)
    api: str = option("completions", "endpoint API", choices=("completions", "chat"))
    adam_betas: list[float] = option([0.9, 0.999], "AdamW betas", minimum=0,
                                     exclusive_maximum=1, check=length(2))

Bounds and choices of a list-valued key apply to each item; `check` is a callable that returns
what is wrong with the whole (coerced) value, or None. A subclass that redeclares a key only to
change its default or help keeps the constraints of the base class's declaration.

Stage configs for later stages (rm, dpo, ppo, ...) live beside their recipes but are built from
the same pieces: `option()` fields and nested option groups.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rlhfkit.errors import ConfigError, RlhfkitError

CONSTRAINTS = ("minimum", "exclusive_minimum", "maximum", "exclusive_maximum", "choices", "check")


#: Seeds go to numpy as well as torch, which takes 0 <= seed < 2**32.
SEED_RANGE = {"minimum": 0, "maximum": 2**32 - 1}


def option(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    minimum: float | None = None,
    exclusive_minimum: float | None = None,
    maximum: float | None = None,
    exclusive_maximum: float | None = None,
    choices: Sequence[Any] | None = None,
    check: Callable[[Any], str | None] | None = None,
    **kwargs: Any,
) -> Any:
    """A config field with its help text and optional constraints, checked by `build`.

    Args:
        default: the default value; mutable defaults (list, dict) are copied per instance.
        help: one line for `--help`.
        minimum / maximum: inclusive bounds of a number (of each item of a list).
        exclusive_minimum / exclusive_maximum: exclusive bounds.
        choices: the allowed values (of each item of a list).
        check: `value -> problem or None` for what bounds cannot say (a list's length); the
            problem reads after the key, e.g. "must have 2 items".
    """
    given = {
        "minimum": minimum,
        "exclusive_minimum": exclusive_minimum,
        "maximum": maximum,
        "exclusive_maximum": exclusive_maximum,
        "choices": tuple(choices) if choices is not None else None,
        "check": check,
    }
    metadata = {"help": help, **{name: v for name, v in given.items() if v is not None}}
    if isinstance(default, (list, dict)):
        value = default
        return field(default_factory=lambda: type(value)(value), metadata=metadata, **kwargs)
    return field(default=default, metadata=metadata, **kwargs)


def length(n: int) -> Callable[[Any], str | None]:
    """A `check` for `option`: the list must have exactly `n` items."""

    def has_length(value: Any) -> str | None:
        return None if len(value) == n else f"must have {n} items"

    return has_length


def _bound_problem(value: Any, constraints: dict[str, Any]) -> str | None:
    """What is wrong with one scalar `value` under `constraints` (None when nothing)."""
    choices = constraints.get("choices")
    if choices is not None and value not in choices:
        return "must be one of " + ", ".join(str(c) for c in choices)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    # Written as `not (value >= bound)` so that NaN fails every bound.
    tests = (
        ("minimum", ">=", lambda b: value >= b),
        ("exclusive_minimum", ">", lambda b: value > b),
        ("maximum", "<=", lambda b: value <= b),
        ("exclusive_maximum", "<", lambda b: value < b),
    )
    for name, symbol, holds in tests:
        bound = constraints.get(name)
        if bound is not None and not holds(bound):
            return f"must be {symbol} {bound if isinstance(bound, int) else format(bound, 'g')}"
    return None


def constraint_problem(value: Any, constraints: dict[str, Any]) -> str | None:
    """What is wrong with a coerced `value` under an option's constraints, or None.

    Bounds and choices apply to each item of a list; `check` to the whole value."""
    items = value if isinstance(value, list) else [value]
    for item in items:
        problem = _bound_problem(item, constraints)
        if problem:
            return problem + (" (each item)" if isinstance(value, list) else "")
    check = constraints.get("check")
    return check(value) if check is not None else None


def constraints_of(cls: type, name: str) -> dict[str, Any]:
    """The constraints of key `name` of `cls`: from the most derived declaration that has any,
    so a subclass redeclaring a key for a new default keeps the base class's range."""
    for klass in cls.__mro__:
        declared = getattr(klass, "__dataclass_fields__", {}).get(name)
        if declared is None:
            continue
        found = {k: v for k, v in declared.metadata.items() if k in CONSTRAINTS}
        if found:
            return found
    return {}


def describe_constraints(constraints: dict[str, Any]) -> str:
    """`>= 1`, `> 0, <= 1`, `one of a, b`: an option's constraints for `--help`."""
    symbols = {"minimum": ">=", "exclusive_minimum": ">", "maximum": "<=", "exclusive_maximum": "<"}
    parts = [f"{symbols[k]} {constraints[k]:g}" for k in symbols if k in constraints]
    if "choices" in constraints:
        parts.append("one of " + ", ".join(str(c) for c in constraints["choices"]))
    return ", ".join(parts)


def group(cls: type, help: str = "") -> Any:
    """A nested option group (`lora.r`, `dpo.beta`)."""
    return field(default_factory=cls, metadata={"help": help, "group": True})


# ---------------------------------------------------------------------------------------------
# Shared pieces
# ---------------------------------------------------------------------------------------------


def attention_problem(name: str) -> str | None:
    """A `check` for `attn_implementation`: what the installed transformers accepts.

    Mirrors `PreTrainedModel._check_and_adjust_attn_implementation`: "eager", a registered
    attention function (sdpa, flash_attention_N, flex_attention, paged|eager), the deprecated
    `paged|` prefix, or a hub kernel (`kernels-community/flash-attn2`). Whether a given model
    supports it is still checked when it loads. If transformers has moved these names, the check
    is left to load time rather than refusing a value that may be valid."""
    if not name:
        return None
    try:
        from transformers.integrations.hub_kernels import is_kernel
        from transformers.modeling_flash_attention_utils import (
            FLASH_ATTENTION_COMPATIBILITY_MATRIX,
        )
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    except ImportError:
        return None
    valid = ["eager", "paged|eager", *ALL_ATTENTION_FUNCTIONS.valid_keys()]
    valid += [f"flash_attention_{v}" for v in FLASH_ATTENTION_COMPATIBILITY_MATRIX]
    if name in valid or name.removeprefix("paged|") in valid or is_kernel(name):
        return None
    return "must be one of " + ", ".join(dict.fromkeys(valid)) + ", or a hub kernel org/repo"


@dataclass
class LoraOptions:
    r: int = option(0, "LoRA rank; 0 trains all weights (full fine-tuning)", minimum=0)
    alpha: int = option(16, "LoRA scaling numerator (scale = alpha / r)", minimum=1)
    dropout: float = option(
        0.0,
        "dropout on the LoRA branch (sft only: the other stages need a deterministic forward "
        "pass and refuse it)",
        minimum=0,
        exclusive_maximum=1,
    )
    target_modules: list[str] = option(
        ["q_proj", "k_proj", "v_proj", "o_proj"],
        "module names that get adapters; by default the attention projections, or peft's default "
        "targets for an architecture without these names (GPT-NeoX, GPT-2)",
        check=lambda names: None if names else "must name at least one module",
    )


@dataclass
class BaseConfig:
    model: str = option("", "model: a local directory or a hub id")
    output_dir: str = option("runs/out", "where config.yaml, metrics, the model and checkpoints go")
    seed: int = option(0, "random seed (data order, initialisation, sampling)", **SEED_RANGE)
    dtype: str = option(
        "auto",
        "weight dtype: auto (fp32 on CPU, bf16 on GPU), float32, bfloat16, float16",
        choices=("auto", "float32", "fp32", "bfloat16", "bf16", "float16", "fp16"),
    )


@dataclass
class TrainConfig(BaseConfig):
    train_data: str = option("", "training data: .jsonl/.json/.parquet/.csv file or hub dataset")
    eval_data: str = option("", "evaluation data (same formats); empty = no evaluation")
    max_steps: int = option(-1, "optimizer steps; -1 (or 0) = derive from epochs", minimum=-1)
    epochs: float = option(
        1.0, "passes over train_data (fractions allowed) when max_steps=-1", exclusive_minimum=0
    )
    batch_size: int = option(8, "examples per device per micro-batch", minimum=1)
    eval_batch_size: int = option(16, "examples per device per evaluation batch", minimum=1)
    grad_accum: int = option(1, "micro-batches per optimizer step", minimum=1)
    learning_rate: float = option(1e-5, "peak learning rate (AdamW)", minimum=0)
    lr_scheduler: str = option(
        "cosine",
        "learning-rate schedule after warm-up: cosine, linear, constant",
        choices=("cosine", "linear", "constant"),
    )
    warmup_ratio: float = option(
        0.0, "fraction of steps with linear warm-up from 0", minimum=0, maximum=1
    )
    weight_decay: float = option(
        0.0, "AdamW weight decay (not applied to biases and norms)", minimum=0
    )
    adam_betas: list[float] = option(
        [0.9, 0.999], "AdamW betas (beta1, beta2)", minimum=0, exclusive_maximum=1, check=length(2)
    )
    max_grad_norm: float = option(1.0, "gradient clipping by global norm; 0 = off", minimum=0)
    max_length: int = option(
        512, "maximum tokens of prompt + completion (longer: truncated)", minimum=1
    )
    max_prompt_length: int = option(
        256, "maximum prompt tokens (longer prompts lose their start)", minimum=1
    )
    mixed_precision: str = option("no", "accelerate mixed precision: no, bf16, fp16")
    gradient_checkpointing: bool = option(False, "recompute activations in backward (saves memory)")
    compile: bool = option(
        False,
        "torch.compile each transformer block (fuses norms, rotary and activations: faster "
        "steps on a GPU; each new input shape first pays its compile time)",
    )
    attn_implementation: str = option(
        "",
        "attention kernel: sdpa, eager, flash_attention_2, a hub kernel org/repo; empty = default",
        check=attention_problem,
    )
    logging_steps: int = option(10, "log metrics every N optimizer steps", minimum=1)
    eval_steps: int = option(0, "evaluate every N steps; 0 = only at the end", minimum=0)
    save_steps: int = option(
        0, "write a resumable checkpoint every N steps; 0 = only at the end", minimum=0
    )
    save_total_limit: int = option(2, "keep at most this many checkpoints; 0 = all", minimum=0)
    resume: bool = option(False, "continue from the last checkpoint in output_dir/checkpoints")
    report_to: list[str] = option([], "trackers through accelerate: tensorboard, wandb")
    progress: bool = option(
        True, "show a progress bar (false: transformers' loading and saving bars too)"
    )
    lora: LoraOptions = group(LoraOptions, "LoRA adapters through peft")


@dataclass
class SamplingOptions:
    max_new_tokens: int = option(64, "maximum tokens sampled per response", minimum=1)
    temperature: float = option(1.0, "sampling temperature; 0 = greedy", minimum=0)
    top_p: float = option(
        1.0,
        "nucleus sampling: keep the smallest set of tokens with this mass",
        exclusive_minimum=0,
        maximum=1,
    )


# ---------------------------------------------------------------------------------------------
# Building, overriding, describing
# ---------------------------------------------------------------------------------------------


class RawText(str):
    """A `key=value` override's text as typed, with `parsed`, its YAML reading. A string key
    takes the text (`model=0755`, `name=a #b` stay as typed), any other key the reading
    (`lr=1e-3` a number, `layers=[1,2]` a list)."""

    parsed: Any
    bare: bool = False  # a `--flag` given without a value: true for a boolean key only

    def __new__(cls, raw: str, bare: bool = False) -> RawText:
        text = super().__new__(cls, raw)
        text.bare = bare
        try:
            text.parsed = yaml.load(raw, Loader=_StrictLoader) if raw != "" else ""  # noqa: S506
        except yaml.YAMLError:
            text.parsed = raw
        return text


def _parse_override(item: str) -> tuple[str, Any]:
    if item.startswith("--") and "=" not in item:  # a bare `--flag` (`split_args`)
        return item[2:], RawText("true", bare=True)
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key=value")
    key, raw = item.split("=", 1)
    key = key.strip().lstrip("-")
    return key, RawText(raw)


def _set_dotted(tree: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{key}: {part} is not an option group")
        node = child
    node[parts[-1]] = value


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _all_keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    hints = _field_types(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            keys += _all_keys(hints[f.name], f"{prefix}{f.name}.")
        else:
            keys.append(prefix + f.name)
    return keys


#: Values of an optional key (``float | None``, ...) that mean None on the command line.
NONE_WORDS = ("", "none", "null", "~")


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    if (
        isinstance(value, RawText)
        and value.bare
        and bool not in (annotation, *typing.get_args(annotation))
    ):
        raise ConfigError(f"--{key} needs a value (--{key} VALUE or {key}=VALUE)")
    if isinstance(value, RawText) and annotation is not str:
        origin = typing.get_origin(annotation)
        if origin not in (typing.Union, types.UnionType) or str not in typing.get_args(annotation):
            value = value.parsed  # a typed key reads YAML; a string key keeps the text
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if type(None) in options and (
            value is None
            or (str not in options and isinstance(value, str) and value.lower() in NONE_WORDS)
        ):
            return None  # `ppo.missing_eos_penalty=` / `=none` / `=null`: off
        for option_type in options:
            if option_type is type(None):
                continue
            try:
                return _coerce(value, option_type, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: {value!r} is not a valid {annotation}")
    if origin is list:
        (item_type,) = typing.get_args(annotation) or (Any,)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, item_type, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if annotation is Any:
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):  # `compile=1` reads as an integer
            return bool(value)
        words = ("true", "false", "yes", "no", "on", "off", "1", "0")
        if isinstance(value, str) and value.lower() in words:
            return value.lower() in ("true", "yes", "on", "1")
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        try:
            as_float = float(value)
        except ValueError:
            raise ConfigError(f"{key}: expected an integer, got {value!r}") from None
        if not math.isfinite(as_float) or as_float != int(as_float):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return int(as_float)
    if annotation is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
        if math.isnan(number):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if math.isinf(number):  # `epochs=inf` overflowed deep inside the run
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return number
    if annotation is str:
        if value is None:
            return ""
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    return value


#: The stages whose own keys form a group of that name (`dpo.beta`): such a group given to
#: another stage is named as that stage's, not matched to the nearest key by spelling.
STAGE_GROUPS = ("sft", "rm", "dpo", "ppo")


def _unknown_key(cls: type, dotted: str, prefix: str, value: Any = None) -> ConfigError:
    """The error for a key `cls` does not have, with the nearest valid key as a hint."""
    if not prefix and dotted in STAGE_GROUPS and isinstance(value, dict) and value:
        leaf = f"{dotted}.{next(iter(value))}"
        return ConfigError(
            f"unknown key {leaf!r}: the {dotted}.* keys are `rlhfkit {dotted}`'s, and this stage "
            "has none (see --help for every key)"
        )
    valid = _all_keys(cls, prefix)
    close = difflib.get_close_matches(dotted, valid, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"unknown key {dotted!r}{hint} (see --help for every key)")


def check_keys(cls: type, values: dict[str, Any], prefix: str = "") -> None:
    """Raise `ConfigError` for the first key of the nested dict `values` that `cls` lacks."""
    hints = _field_types(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key, value in values.items():
        if key not in names:
            raise _unknown_key(cls, prefix + str(key), prefix, value)
        if dataclasses.is_dataclass(hints[key]) and isinstance(value, dict):
            check_keys(hints[key], value, f"{prefix}{key}.")


def _checked(value: Any, constraints: dict[str, Any], key: str) -> Any:
    """`value` if it meets the option's `constraints`, else a one-line `ConfigError`."""
    problem = constraint_problem(value, constraints)
    if problem:
        raise ConfigError(f"{key}: {problem}, got {value!r}")
    return value


def check_limits(config: Any, prefix: str = "") -> None:
    """Check every key of a config instance against its declared limits, as `build` does for
    the values it parses: a config constructed in Python (`train(PPOConfig(...))`) meets the
    same one-line errors as the command line."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            check_limits(value, f"{prefix}{f.name}.")
        else:
            _checked(value, constraints_of(type(config), f.name), prefix + f.name)


def build(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass `cls` from a nested dict, checking keys, types and declared ranges."""
    hints = _field_types(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        dotted = prefix + key
        if key not in names:
            raise _unknown_key(cls, dotted, prefix, value)
        annotation = hints[key]
        if dataclasses.is_dataclass(annotation):
            if not isinstance(value, dict):
                raise ConfigError(f"{dotted}: expected a group of keys ({dotted}.KEY=...)")
            kwargs[key] = build(annotation, value, dotted + ".")
        else:
            coerced = _coerce(value, annotation, dotted)
            kwargs[key] = _checked(coerced, constraints_of(cls, key), dotted)
    return cls(**kwargs)


def expand_dotted(values: dict[str, Any]) -> dict[str, Any]:
    """`{"sft.packing": True, "lora": {"r": 4}}` -> `{"sft": {"packing": True}, "lora": ...}`.

    Top-level dotted keys of a YAML file read like the `key=value` overrides; they merge with a
    nested group of the same name, and a key given both ways is an error."""
    tree: dict[str, Any] = {}
    for key, value in values.items():
        key = str(key)
        nested: dict[str, Any] = {}
        _set_dotted(nested, key, value)
        _merge_new(tree, nested, "")
    return tree


def _merge_new(into: dict, other: dict, prefix: str) -> None:
    """Merge `other` into `into`, refusing a key that both set to a value."""
    for key, value in other.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge_new(into[key], value, f"{prefix}{key}.")
        elif key in into:
            raise ConfigError(f"{prefix}{key}: given twice (as a dotted key and in a group)")
        else:
            into[key] = value


class _StrictLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that refuses a key given twice in one mapping (PyYAML keeps the last),
    and reads only true/false as booleans, as YAML 1.2 does: YAML 1.1 also reads yes, no, on
    and off, so `mixed_precision: no` (that key's default) became False."""


# YAML 1.2's booleans: the SafeLoader's resolvers without YAML 1.1's yes/no/on/off.
_StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)


def _strict_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"key {key!r} given twice (lines {seen[key] + 1} and "
                f"{key_node.start_mark.line + 1})",
                key_node.start_mark,
            )
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=True)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _strict_mapping)


def read_yaml(path: Path) -> Any:
    """Parse a config or pipeline file; a key given twice in one mapping is an error rather
    than silently the last one. Raises `ConfigError` naming the file on any YAML problem."""
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_StrictLoader)  # noqa: S506
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err.strerror or err}") from None
    except yaml.YAMLError as err:
        line, problem = yaml_problem(err)
        raise ConfigError(f"{path}:{line}: {problem}" if line else f"{path}: {problem}") from None


def yaml_problem(err: yaml.YAMLError) -> tuple[int | None, str]:
    """The line (from 1; None if unknown) and a one-line "not valid YAML: ..." of a YAML error
    (PyYAML's own text spans several lines and names "<unicode string>", not the file)."""
    if isinstance(err, yaml.MarkedYAMLError):
        mark = err.problem_mark or err.context_mark
        what = " ".join(part for part in (err.context, err.problem) if part)
        return (mark.line + 1 if mark is not None else None), f"not valid YAML: {what}"
    return None, "not valid YAML: " + " ".join(str(err).split())


def load_config(
    cls: type,
    config_file: str | None = None,
    overrides: list[str] | None = None,
    defaults: dict[str, Any] | None = None,
    stage: str | None = None,
) -> Any:
    """Stage defaults < YAML file < `key=value` overrides, then type-checked into `cls`.

    A run's `OUT/config.yaml` starts with `stage: NAME`; given `stage`, a file whose `stage`
    names it loads as it is (so a run can be repeated with `--config OUT/config.yaml`), and one
    that names another stage is an error.
    """
    tree: dict[str, Any] = {}
    for key, value in (defaults or {}).items():
        _set_dotted(tree, key, value)
    from_file: set[str] = set()  # the keys (and groups) whose value the file gives
    if config_file:
        path = Path(config_file)
        if path.is_dir():
            raise ConfigError(f"--config: {config_file!r} is a directory; give a YAML file")
        if not path.is_file():
            raise ConfigError(f"--config: file {config_file!r} not found")
        loaded = read_yaml(path) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{config_file}: expected a mapping of keys at the top level")
        if stage is not None and "stage" in loaded:
            written_for = loaded.pop("stage")
            if written_for != stage:
                raise ConfigError(
                    f"{config_file}: stage: the file is a {written_for!r} config, not {stage!r}"
                )
        try:
            loaded = expand_dotted(loaded)
            check_keys(cls, loaded)
        except ConfigError as err:
            raise ConfigError(f"{config_file}: {err}") from None
        _deep_merge(tree, loaded)
        from_file = _keys_and_groups(loaded)
    for item in overrides or []:  # a later item wins (programs compose base + changes)
        key, value = _parse_override(item)
        from_file -= {key, *(k for k in from_file if k.startswith(key + "."))}
        if isinstance(value.parsed, dict) and _is_group(cls, key):
            # `lora={r: 8}` sets lora.r and keeps lora's other keys ("a: b" for a string key
            # stays text)
            for dotted, leaf in _dotted_leaves(value.parsed, key):
                _set_dotted(tree, dotted, leaf)
        else:
            _set_dotted(tree, key, value)
    try:
        return build(cls, tree)
    except ConfigError as err:  # a value the file gave: the error names the file, as for keys
        key = str(err).split(":", 1)[0]
        if key in from_file:
            raise ConfigError(f"{config_file}: {err}") from None
        raise


def _keys_and_groups(tree: dict, prefix: str = "") -> set[str]:
    """Every dotted key of a nested mapping, its groups included (`lora`, `lora.r`)."""
    found = set()
    for name, value in tree.items():
        dotted = f"{prefix}{name}"
        found.add(dotted)
        if isinstance(value, dict):
            found |= _keys_and_groups(value, dotted + ".")
    return found


def _is_group(cls: type, dotted: str) -> bool:
    """Whether `dotted` names an option group (a nested dataclass) of `cls`."""
    node: Any = cls
    for part in dotted.split("."):
        hints = _field_types(node) if dataclasses.is_dataclass(node) else {}
        if part not in hints:
            return False
        node = hints[part]
    return dataclasses.is_dataclass(node)


def _dotted_leaves(tree: dict, prefix: str):
    """(`prefix.a.b`, value) for every leaf of a nested mapping."""
    for name, value in tree.items():
        if isinstance(value, dict):
            yield from _dotted_leaves(value, f"{prefix}.{name}")
        else:
            yield f"{prefix}.{name}", value


def check_unique_overrides(overrides: list[str]) -> None:
    """A key typed twice on one command line is an error naming both items: the last would
    win silently and hide the typo (a YAML mapping with a key twice is refused the same way).
    Programs that compose `load_config(overrides=base + changes)` keep last-wins."""
    given: dict[str, str] = {}
    for item in overrides:
        key, _ = _parse_override(item)
        if key in given:
            raise ConfigError(
                f"{key}: given twice on the command line ({given[key]!r} and {item!r}); "
                "give each key once"
            )
        given[key] = item


def write_config(out: Path, stage: str, config: Any) -> None:
    """`OUT/config.yaml`: `stage: NAME` and then every key, which `load_config(...,
    stage=NAME)` reads back.

    Written to a temporary file in `out` and renamed over the old one (`Path.replace` is
    `os.replace`), so a crash mid-write never leaves a truncated config.yaml: a resumed run
    checks its checkpoints against this file.
    """
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".config.yaml.tmp"
    tmp.write_text(yaml.safe_dump({"stage": stage, **dataclasses.asdict(config)}, sort_keys=False))
    tmp.replace(out / "config.yaml")


def _deep_merge(into: dict, other: dict) -> None:
    for key, value in other.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _deep_merge(into[key], value)
        else:
            into[str(key)] = value


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def key_lines(rows: list[tuple[str, str, str, str]]) -> list[str]:
    """Two lines per config key (`describe`'s rows): its help, then its type and default."""
    width = min(max(len(r[0]) for r in rows), 28)
    lines = []
    for key, type_name, default, help_text in rows:
        lines.append(f"  {key.ljust(width)}  {help_text}")
        lines.append(f"  {''.ljust(width)}  [{type_name}, default {default}]")
    return lines


def split_args(argv: list[str], positional: tuple[str, ...] = ()) -> tuple[str | None, list[str]]:
    """(config file, overrides) from `--config F`, `key=value`, `--key value`, `--key=value`."""
    config_file, overrides, free = None, [], list(positional)
    i = 0
    while i < len(argv):
        arg = argv[i]
        given = None
        if arg in ("--config", "-c"):
            if i + 1 >= len(argv):
                raise RlhfkitError("--config needs a file")
            given, i = argv[i + 1], i + 2
        elif arg.startswith("--config="):
            given, i = arg.split("=", 1)[1], i + 1
        if given is not None:
            if config_file is not None:  # the second silently replaced the first
                raise RlhfkitError(
                    f"--config given twice ({config_file}, {given}); give one file (keys on "
                    "the command line override it)"
                )
            config_file = given
            continue
        if arg.startswith("--"):
            key, has_value, value = arg[2:].partition("=")
            key = key.replace("-", "_")  # `--learning-rate` names `learning_rate`, either form
            if has_value:
                overrides.append(f"{key}={value}")
                i += 1
            elif i + 1 < len(argv) and not argv[i + 1].startswith("--") and "=" not in argv[i + 1]:
                overrides.append(f"{key}={argv[i + 1]}")
                i += 2
            else:
                overrides.append(f"--{key}")  # a bare flag: true for a boolean key, else refused
                i += 1
            continue
        if "=" in arg:
            overrides.append(arg)
        elif free:
            overrides.append(f"{free.pop(0)}={arg}")
        else:
            raise RlhfkitError(f"unexpected argument {arg!r} (expected key=value)")
        i += 1
    return config_file, overrides


def describe(cls: type, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """Rows of (key, type, default, help) for every key of `cls`, nested groups included."""
    rows = []
    hints = _field_types(cls)
    defaults = cls()
    for f in dataclasses.fields(cls):
        annotation = hints[f.name]
        if dataclasses.is_dataclass(annotation):
            rows += describe(annotation, f"{prefix}{f.name}.")
            continue
        type_name = getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")
        if typing.get_origin(annotation) is not None:
            type_name = str(annotation).replace("typing.", "")
        allowed = describe_constraints(constraints_of(cls, f.name))
        if allowed:
            type_name += f" {allowed}"
        rows.append(
            (
                prefix + f.name,
                type_name,
                repr(getattr(defaults, f.name)),
                f.metadata.get("help", ""),
            )
        )
    return rows
