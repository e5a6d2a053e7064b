"""`rlhfkit serve model=RM_DIR[,RM_DIR,...]`: a reward model (or an ensemble of them) served
as the HTTP scorer that ``ppo.reward_model``, ``eval`` and the annotation tool accept
(`rlhfkit.models.reward_fn`).

Protocol, as the client (`reward_fn.HttpScorer`) speaks it: it POSTs to the URL it is given,
so the scorer answers at ``/score`` (the URL to give: ``http://HOST:PORT/score``) and at ``/``,
``{"prompts": [...], "responses": [...]}`` -> ``{"scores": [...]}``. Each score is the reward
model's normalised reward (the gain and bias stored in ``rlhfkit_reward.json`` applied, the
heads of an ensemble averaged): exactly what `load_reward_function(RM_DIR[,...])` returns in
process.
Prompts and responses are strings or conversations (``[{"role", "content"}]``), as in rlhfkit's
data formats, and are tokenised and truncated as `rlhfkit rm` trained on them (`encode_pair`).
Two optional fields, which rlhfkit's client sends for sampled responses (`score_samples`), make
a served reward model score exactly as in process: ``chat_prompts`` (each prompt as the data
held it; scored instead of the rendered ``prompts``) and ``ended`` (``false`` for a response cut
at the sampling limit, scored as sampled, without an end of turn; default ``true``).

Requests are scored one after another in one worker thread, off the event loop, each in batches
of ``batch_size`` rows of similar length. ``GET /health`` reports readiness and counters. The
text-generation endpoints (``/v1/...``) are refused with a message saying what this server is,
so a judge or critic pointed at it by mistake learns why.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request

from rlhfkit.errors import ConfigError, RlhfkitError
from rlhfkit.models.reward_ensemble import reward_model_dirs
from rlhfkit.models.reward_fn import load_reward_function
from rlhfkit.models.reward_model import REWARD_INFO_FILE
from rlhfkit.models.value_model import is_reward_model_dir
from rlhfkit.serving.http_errors import ApiError, install_error_handlers, read_json_body

SCORE_PATH = "/score"


def is_reward_model(model_dir: str) -> bool:
    """Whether ``model_dir`` holds a reward model rather than a causal LM: a directory with
    ``rlhfkit_reward.json`` (written by `rlhfkit rm`), or a sequence classifier with one label
    (a reward model from elsewhere, scored raw). A classifier with several labels is neither,
    and is refused."""
    if (Path(model_dir) / REWARD_INFO_FILE).is_file():
        return True
    if not is_reward_model_dir(model_dir):
        return False
    from transformers import AutoConfig

    num_labels = AutoConfig.from_pretrained(model_dir).num_labels
    if num_labels != 1:
        raise ConfigError(
            f"model: {model_dir} is a sequence classifier with {num_labels} labels: neither a "
            f"causal LM nor a reward model (one score, or {REWARD_INFO_FILE}), so nothing to serve"
        )
    return True


def serves_ensemble(spec: str) -> bool:
    """Whether `spec` is an ensemble of reward-model directories ``DIR,DIR,...``; every member
    must be a reward model (`is_reward_model`), or the error names the one that is not."""
    directories = reward_model_dirs(spec)
    if directories is None:
        return False
    for directory in directories:
        if not is_reward_model(directory):
            raise ConfigError(
                f"model: {directory} (in the ensemble {spec!r}) is not a reward model; every "
                "member must be an `rlhfkit rm` model directory"
            )
    return True


def _is_conversation(value: Any) -> bool:
    """Whether ``value`` is a non-empty list of ``{role, content}`` messages with text."""
    return (
        isinstance(value, list)
        and bool(value)
        and all(
            isinstance(m, dict)
            and isinstance(m.get("role"), str)
            and isinstance(m.get("content"), str)
            for m in value
        )
    )


def _texts_or_conversations(body: dict, key: str) -> list:
    """``body[key]`` as a list of strings and conversations, or a 400 naming the bad item."""
    values = body.get(key)
    if not isinstance(values, list):
        raise ApiError(f"{key} must be a list of strings or conversations", key)
    for i, value in enumerate(values):
        if not (isinstance(value, str) or _is_conversation(value)):
            raise ApiError(
                f"{key}[{i}] must be a string or a list of {{role, content}} messages", key
            )
        texts = [value] if isinstance(value, str) else [m["content"] for m in value]
        try:  # JSON's "\ud800" decodes to a lone surrogate, which no tokenizer takes
            for text in texts:
                text.encode("utf-8")
        except UnicodeEncodeError:
            raise ApiError(f"{key}[{i}] is not valid Unicode (a lone surrogate)", key) from None
    return values


def parse_score_request(body: Any) -> tuple[list, list, list[bool] | None]:
    """The prompts (``chat_prompts`` where given), responses and ``ended`` flags (None: every
    response ended) of a scoring request, or a 400 saying what is wrong."""
    if not isinstance(body, dict):
        raise ApiError(
            'the request body must be a JSON object {"prompts": [...], "responses": [...]}'
        )
    prompts = _texts_or_conversations(body, "prompts")
    responses = _texts_or_conversations(body, "responses")
    if len(prompts) != len(responses):
        raise ApiError(f"{len(prompts)} prompts but {len(responses)} responses", "responses")
    ended = body.get("ended")
    if body.get("chat_prompts") is not None:
        chat_prompts = _texts_or_conversations(body, "chat_prompts")
        if len(chat_prompts) != len(prompts):
            raise ApiError(f"chat_prompts must be a list of {len(prompts)} prompts", "chat_prompts")
        prompts = chat_prompts
    if ended is not None and not (
        isinstance(ended, list)
        and len(ended) == len(prompts)
        and all(isinstance(e, bool) for e in ended)
    ):
        raise ApiError(f"ended must be a list of {len(prompts)} true/false values", "ended")
    for i, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
        if isinstance(response, list) and isinstance(prompt, str):
            raise ApiError(
                f"responses[{i}] is a conversation but prompts[{i}] is a string: a conversation "
                "response needs a conversation prompt",
                "responses",
            )
    return prompts, responses, ended


def create_reward_app(
    model_dir: str,
    *,
    model_name: str,
    dtype: str = "auto",
    batch_size: int = 32,
    max_request_bytes: int = 8 << 20,
) -> FastAPI:
    """The FastAPI app scoring (prompt, response) pairs with the reward model in ``model_dir``
    (loaded here, before it returns).

    Args:
        model_dir: A reward-model directory (`rlhfkit rm`'s ``OUT/model``), or several joined
            by commas: one ensemble, scored with its heads' mean (`reward_ensemble`).
        model_name: The name `/health` reports.
        dtype: Weight dtype (``auto``: fp32 on CPU, bf16 on a GPU).
        batch_size: Most rows in one forward pass.
        max_request_bytes: Larger request bodies are refused (413).
    """
    # A directory or an ensemble spec: the same loader `ppo` and `eval` use in process.
    scorer = load_reward_function(model_dir, batch_size=max(1, batch_size), dtype=dtype)
    worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rlhfkit-scorer")
    stats = {"requests": 0, "scored": 0}

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        worker.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="rlhfkit serve (reward model)", version="1", lifespan=lifespan)
    app.state.scorer = scorer
    app.state.model_name = model_name
    app.state.served_as, app.state.path = "reward model scorer", SCORE_PATH
    install_error_handlers(app)

    def score_pairs(prompts: list, responses: list, ended: list[bool] | None) -> list[float]:
        from jinja2 import TemplateError

        try:
            return scorer(prompts, responses, ended=ended)
        # A conversation the template refuses or renders otherwise once a response follows
        # (RlhfkitError): the request's fault, a 400.
        except (TemplateError, ValueError, RlhfkitError) as err:
            raise ApiError(f"cannot score these pairs: {err}") from err

    async def score(request: Request) -> dict:
        body = await read_json_body(request, max_request_bytes)
        prompts, responses, ended = parse_score_request(body)
        loop = asyncio.get_running_loop()
        scores = await loop.run_in_executor(worker, score_pairs, prompts, responses, ended)
        stats["requests"] += 1
        stats["scored"] += len(scores)
        return {"scores": scores}

    app.add_api_route(SCORE_PATH, score, methods=["POST"])
    app.add_api_route("/", score, methods=["POST"])

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": model_name, "kind": "reward_model", **stats}

    @app.api_route("/v1/{endpoint:path}", methods=["GET", "POST"])
    async def not_a_generator(endpoint: str) -> None:
        raise ApiError(
            f"{model_name!r} is a reward model: this server scores text and does not generate "
            f"it (/v1/{endpoint}). POST {SCORE_PATH} with "
            '{"prompts": [...], "responses": [...]} answers {"scores": [...]}; '
            "serve a policy or SFT model for text generation"
        )

    return app


__all__ = ["SCORE_PATH", "create_reward_app", "is_reward_model", "parse_score_request"]
