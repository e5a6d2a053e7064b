"""Reward functions from a spec string: `(prompts, responses) -> scores`.

`ppo.reward_model`, `eval`, and the annotation tool's reward-model-in-the-loop accept:

- a reward-model directory written by `rlhfkit rm` (normalisation applied when stored);
- several such directories joined by commas, `DIR,DIR,...`: an ensemble of independently
  trained reward models whose heads are pooled (`rlhfkit.models.reward_ensemble`);
- an HTTP scorer URL: `POST URL` with `{"prompts": [...], "responses": [...]}` answering
  `{"scores": [...]}`; sampled responses (`score_samples`) also send `chat_prompts` (each prompt
  as the data held it: a string or a conversation) and `ended` (whether each response ended),
  which `rlhfkit serve` uses to score as in process and other scorers may ignore;
- `python:package.module:function` naming a callable `(prompts, responses) -> list[float]`
  (the embedded world's gold reward is `python:rlhfkit.synthetic.gold:gold_rewards`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable

from rlhfkit.errors import ConfigError
from rlhfkit.user_code import import_user_module

RewardFn = Callable[[list[str], list[str]], list[float]]


def score_samples(
    reward_fn: RewardFn,
    prompts: list,
    responses: list[str],
    *,
    rendered: list[str],
    ended: list[bool],
) -> list[float]:
    """Rewards of sampled responses, each given to the reward in the form it understands best.

    An rlhfkit reward model (`RewardScorer`, or an ensemble of them) gets each prompt as the
    data held it, so a conversation is rendered with the reward model's chat template and the
    response becomes the assistant's turn, as `rm` trained on it, and gets `ended`: a response
    that ran out of tokens is scored as sampled, without an EOS. An HTTP scorer gets the
    `rendered` text as `prompts` (its contract) plus both of those as `chat_prompts` and
    `ended`, so a reward model served by `rlhfkit serve` scores exactly as in process. A python
    function keeps its contract: the `rendered` prompt text and the response text.

    Args:
        reward_fn: From `load_reward_function`.
        prompts: Each row's prompt as loaded: a string or a conversation.
        responses: Decoded responses (no EOS).
        rendered: Each row's prompt as text (conversations through the policy's chat template).
        ended: Whether each response ended with EOS.
    """
    from rlhfkit.models.head_scorer import HeadScorer

    if isinstance(reward_fn, HeadScorer):
        return reward_fn(prompts, responses, ended=ended)
    if isinstance(reward_fn, HttpScorer):
        return reward_fn(rendered, responses, chat_prompts=prompts, ended=ended)
    return reward_fn(rendered, responses)


def score_samples_with_disagreement(
    reward_fn: RewardFn,
    prompts: list,
    responses: list[str],
    *,
    rendered: list[str],
    ended: list[bool],
) -> tuple[list[float], list[float] | None]:
    """`score_samples`, and where `reward_fn` is an rlhfkit reward-model ensemble (K >= 2
    heads) each sample's disagreement, the std of its K head scores, from the same scoring
    pass; None for any other reward."""
    from rlhfkit.models.reward_model import is_ensemble

    if is_ensemble(reward_fn):
        return reward_fn.score_with_disagreement(prompts, responses, ended=ended)
    return score_samples(reward_fn, prompts, responses, rendered=rendered, ended=ended), None


def load_reward_function(spec: str, **kwargs) -> RewardFn:
    """Resolve a reward spec to a callable. `kwargs` go to the reward-model loader."""
    if not spec:
        raise ConfigError("reward_model: no reward given (a directory, a URL or python:mod:fn)")
    if spec.startswith("python:"):
        return _python_function(spec[len("python:") :])
    if spec.startswith(("http://", "https://")):
        return HttpScorer(spec)
    if os.path.isdir(spec):
        from rlhfkit.models.reward_model import load_reward_scorer

        return load_reward_scorer(spec, **kwargs)
    from rlhfkit.models.reward_ensemble import load_reward_ensemble, reward_model_dirs

    directories = reward_model_dirs(spec)
    if directories is not None:
        return load_reward_ensemble(directories, **kwargs)
    raise ConfigError(
        f"reward_model: {spec!r} is neither a directory, several directories joined by ',' "
        "(an ensemble), an http(s) URL nor python:module:function"
    )


def _python_function(target: str) -> RewardFn:
    if ":" not in target:
        raise ConfigError(f"reward_model: python:{target} must be python:package.module:function")
    module_name, function_name = target.rsplit(":", 1)
    try:
        module = import_user_module(module_name)
    except ImportError as err:
        raise ConfigError(f"reward_model: cannot import {module_name!r}: {err}") from err
    function = getattr(module, function_name, None)
    if not callable(function):
        raise ConfigError(f"reward_model: {module_name} has no callable {function_name!r}")

    def score(prompts: list[str], responses: list[str]) -> list[float]:
        scores = [float(s) for s in function(list(prompts), list(responses))]
        if len(scores) != len(prompts):
            raise ConfigError(
                f"reward_model: {target} returned {len(scores)} scores for {len(prompts)} inputs"
            )
        return scores

    return score


def _checked_scores(answer: object, count: int) -> list[float]:
    """The scorer's `{"scores": [...]}` as `count` finite floats, or a ValueError saying what is
    wrong (Python's JSON reader takes NaN and Infinity; a string "7" is not a list)."""
    scores = answer["scores"] if isinstance(answer, dict) else None
    if not isinstance(scores, list):
        raise ValueError(f'expected {{"scores": [...]}}, got {str(answer)[:100]}')
    if len(scores) != count:
        raise ValueError(f"{len(scores)} scores for {count} inputs")
    values = []
    for i, score in enumerate(scores):
        if isinstance(score, bool) or not isinstance(score, (int, float)):
            raise ValueError(f"scores[{i}] is not a number: {score!r}")
        if not math.isfinite(score):
            raise ValueError(f"scores[{i}] is not finite: {score!r}")
        values.append(float(score))
    return values


class HttpScorer:
    """`(prompts, responses) -> scores` through `POST url` (the protocol in the module doc),
    retried with exponential back-off; a last failure is a `ConfigError` naming the URL."""

    def __init__(self, url: str, *, timeout: float = 60.0, retries: int = 3):
        self.url, self.timeout, self.retries = url, timeout, retries

    def check(self) -> None:
        """Score one pair now: a scorer that is down or refuses the protocol is a `ConfigError`
        before a run starts (and before a fresh run removes an earlier run's checkpoints)."""
        self(["Hello."], [" Hello."])

    def __call__(
        self,
        prompts: list[str],
        responses: list[str],
        *,
        chat_prompts: list | None = None,
        ended: list[bool] | None = None,
    ) -> list[float]:
        """Scores of (prompt, response) text pairs. `chat_prompts` (each prompt as loaded) and
        `ended` (whether each response ended) are sent too when given (`score_samples`)."""
        import time

        import httpx

        body: dict = {"prompts": list(prompts), "responses": list(responses)}
        if chat_prompts is not None:
            body["chat_prompts"] = list(chat_prompts)
        if ended is not None:
            body["ended"] = [bool(e) for e in ended]
        delay = 1.0
        for attempt in range(self.retries):
            try:
                response = httpx.post(self.url, json=body, timeout=self.timeout)
                if 400 <= response.status_code < 500 and response.status_code != 429:
                    # The request's own fault: the same request fails the same way again.
                    raise ConfigError(
                        f"reward_model: scorer {self.url} refused the request: HTTP "
                        f"{response.status_code}: {response.text[:200]}"
                    )
                response.raise_for_status()
                return _checked_scores(response.json(), len(prompts))
            except (httpx.HTTPError, KeyError, ValueError, TypeError) as err:
                if attempt == self.retries - 1:
                    raise ConfigError(
                        f"reward_model: scorer {self.url} failed after {self.retries} tries: {err}"
                    ) from err
                time.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")
