"""AI feedback: language models (local or behind an OpenAI-compatible endpoint) that write
critiques and revisions and pick the better of two responses, plus the simulated judge of the
embedded world.

Two text-model backends share one small interface (`TextModel`):

* `LocalLM` -- a model directory (or hub id) run in process: `generate` samples with
  `rlhfkit.rollout.sampling.sample_responses`; `option_scores` is exact: the summed log-prob of
  each option string (``" (A)"``, ``" (B)"``) after the prompt, one forward pass per batch.
* `EndpointLM` -- `/v1/completions` or `/v1/chat/completions` of `rlhfkit serve`, vLLM or a
  hosted API, requests sent concurrently. `option_scores` appends the options' shared prefix
  (``" ("``) to the prompt, asks for one token with ``logprobs``, and reads the log-probs of the
  tokens that start each option's remainder (``"A"``, ``"B"``); a chat reply, which opens a new
  message, may also start the whole option (``"(A"``). An endpoint that offers no
  log-probs for either option (none at all, or neither among its top ``top_logprobs``) gets its
  answer parsed instead: a hard label (1, 0, or 0.5 when unreadable), marked ``"parsed"``;
  `rlhfkit label` counts them and warns when most judgments are parsed or undecided. An answer
  not in OpenAI's shape (a choice without its text, log-probs of the wrong type) is an
  `EndpointAnswerError` naming the URL and the part at fault, which `rlhfkit label` and
  `rlhfkit cai` report as they report an endpoint that is down (work so far kept).

A local prompt longer than its budget -- ``max_prompt_length``, and at most the model's
``max_position_embeddings`` minus the tokens to be generated or scored -- loses its start;
`LocalLM.prompts_cut` counts those prompts.

A judgment (RL-CAI, Bai et al. 2022 sec. 4.1): a comparison principle is drawn at random per pair;
the multiple-choice prompt shows the pair in both orders (a, b) and (b, a); each order gives
``P(option A) = sigmoid(logp_A - logp_B)`` (`rlhfkit.losses.soft_labels.choice_probability`); the
two are averaged to cancel position bias (`debiased_preference`). With chain of thought the model
first writes its reasoning (sampled with the run's sampling options), the answer is scored after
it, and the final label is clamped to [0.4, 0.6] (`clamp_probability`), as the paper does for
over-confident chain-of-thought labels. Departure: the paper ensembles over several principles;
here one principle per pair (several pairs per prompt still see several principles).

`SimulatedJudge` replaces the model by the embedded world's annotators: ``P(option A)`` is the
drawn annotator's ``P_k(first > second)``, so labels are known-noisy and agree with the gold
reward as well as the annotators do.

Outputs follow TRL's formats: when the prompt is a conversation, responses are written as
``[{"role": "assistant", "content": ...}]`` (`as_reply`). Work written to disk carries the run's
settings (`settings_changes` says which differ), so a rerun never passes off results made with
another judge, constitution or seed as its own.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from rlhfkit.data.formats import as_reply
from rlhfkit.data.tokenize import adds_special_tokens
from rlhfkit.errors import ConfigError, DataError
from rlhfkit.feedback.constitution import ComparisonPrinciple, Constitution
from rlhfkit.feedback.openai_client import (
    EndpointAnswerError,
    OpenAIClient,
    is_endpoint,
    normalise_base_url,
)
from rlhfkit.losses.soft_labels import choice_probability, clamp_probability, debiased_preference
from rlhfkit.rollout.sampling import SamplingParams


@dataclass
class OptionScore:
    """How a model answered a two-option question.

    Attributes:
        p_first: P(option A), normalised over the two options.
        logp_a: log-prob of option A (None when the answer was parsed from text).
        logp_b: log-prob of option B (None when parsed).
        source: ``"logprobs"``, ``"parsed"`` or ``"simulated"``.
        text: the raw answer text when parsed.
    """

    p_first: float
    logp_a: float | None = None
    logp_b: float | None = None
    source: str = "logprobs"
    text: str = ""


class TextModel(Protocol):
    name: str

    def generate(
        self, prompts: list[str], params: SamplingParams, seeds: Sequence[int]
    ) -> list[str]:
        """One sampled continuation per prompt (cut at the stop strings). ``seeds`` holds one
        seed per prompt: an endpoint takes each prompt's own; a local model samples the batch
        from one generator seeded with the first."""

    def option_scores(self, prompts: list[str], options: Sequence[str]) -> list[OptionScore]:
        """P(option A) for each prompt whose next text is one of the two ``options``."""


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """``text`` up to the first occurrence of any stop string."""
    end = len(text)
    for s in stop:
        at = text.find(s)
        if at != -1:
            end = min(end, at)
    return text[:end]


def parse_choice(text: str, options: Sequence[str]) -> int | None:
    """0 for option A, 1 for option B, None if ``text`` names neither.

    Accepts the option itself (``" (A)"``) or its distinguishing part alone (``"A"``, ``"A)"``).
    """
    stripped = text.strip()
    for i, option in enumerate(options):
        if option.strip() and stripped.startswith(option.strip()):
            return i
    prefix = _common_prefix(options)
    rests = [o[len(prefix) :].strip() for o in options]
    body = stripped.lstrip(" (").strip()
    for i, rest in enumerate(rests):
        key = rest.rstrip(").:")
        if key and body.startswith(key):
            return i
    return None


def _common_prefix(options: Sequence[str]) -> str:
    a, b = options[0], options[1]
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]


# ---------------------------------------------------------------------------------------------
# Local model
# ---------------------------------------------------------------------------------------------


class LocalLM:
    """A causal LM in this process (see the module docstring).

    Args:
        path: model directory or hub id.
        dtype: weight dtype (``auto``: fp32 on CPU, bf16 on a GPU).
        batch_size: rows per generate call or forward pass.
        max_prompt_length: longer prompts lose their start (so do prompts that would leave the
            model's context no room for the tokens generated or scored after them).
        stop: generated text is cut at the first of these strings.

    Attributes:
        context_length: the model's ``max_position_embeddings`` (None when it has none).
        prompts_cut: how many prompts lost their start so far.
    """

    def __init__(
        self,
        path: str,
        *,
        dtype: str = "auto",
        batch_size: int = 32,
        max_prompt_length: int = 1024,
        stop: Sequence[str] = (),
    ):
        import torch

        from rlhfkit.models.loading import load_causal_lm, load_tokenizer

        self.name = path
        self.tokenizer = load_tokenizer(path)
        self.model = load_causal_lm(path, dtype=dtype, trainable=False)
        if torch.cuda.is_available():
            self.model.to("cuda")
        self.batch_size = batch_size
        self.max_prompt_length = max_prompt_length
        self.stop = tuple(stop)
        self.context_length: int | None = getattr(
            self.model.config, "max_position_embeddings", None
        )
        self.prompts_cut = 0

    def _encode(self, text: str, budget: int) -> list[int]:
        """The prompt's token ids, cut to their last ``budget`` (counted in `prompts_cut`)."""
        special = adds_special_tokens(self.tokenizer, text)  # not again after a chat template's
        ids = self.tokenizer(text, add_special_tokens=special).input_ids
        if len(ids) > budget:
            self.prompts_cut += 1
            return ids[-budget:]
        return ids

    def prompt_budget(self, reserved: int) -> int:
        """Longest prompt that leaves ``reserved`` tokens of the context for what follows it.

        Raises:
            ConfigError: ``reserved`` alone fills the model's context.
        """
        return prompt_budget(self.max_prompt_length, self.context_length, reserved)

    def generate(
        self, prompts: list[str], params: SamplingParams, seeds: Sequence[int]
    ) -> list[str]:
        from rlhfkit.rollout.sampling import end_ids, sample_responses

        if not prompts:
            return []
        budget = self.prompt_budget(params.max_new_tokens)
        samples = sample_responses(
            self.model,
            [self._encode(p, budget) for p in prompts],
            params,
            pad_id=self.tokenizer.pad_token_id,
            eos_ids=end_ids(self.model, self.tokenizer),
            batch_size=self.batch_size,
            seed=seeds[0],
        )
        texts = [""] * len(prompts)
        for index, ids in zip(samples.prompt_index, samples.response_ids, strict=True):
            texts[index] = cut_at_stop(
                self.tokenizer.decode(ids, skip_special_tokens=True), self.stop
            )
        return texts

    def option_scores(self, prompts: list[str], options: Sequence[str]) -> list[OptionScore]:
        import torch

        from rlhfkit.data.collate import pad_right
        from rlhfkit.models.logprobs import TokenLogprobs

        option_ids = [self.tokenizer(o, add_special_tokens=False).input_ids for o in options]
        budget = self.prompt_budget(max(len(ids) for ids in option_ids))
        encoded = [self._encode(p, budget) for p in prompts]
        rows = [(prompt_ids, ids) for prompt_ids in encoded for ids in option_ids]
        scorer = TokenLogprobs(self.model)
        device = next(self.model.parameters()).device
        sums: list[float] = []
        with torch.no_grad():
            for start in range(0, len(rows), self.batch_size):
                chunk = rows[start : start + self.batch_size]
                input_ids = pad_right([p + o for p, o in chunk], self.tokenizer.pad_token_id)
                mask = pad_right([[0] * len(p) + [1] * len(o) for p, o in chunk], 0)
                attention = pad_right([[1] * (len(p) + len(o)) for p, o in chunk], 0)
                logps = scorer(
                    input_ids.to(device), mask.to(device), attention_mask=attention.to(device)
                )["logprobs"]  # (B, T), zero outside the option tokens
                sums += logps.sum(-1).tolist()
        scores = []
        for i in range(len(prompts)):
            logp_a, logp_b = sums[2 * i], sums[2 * i + 1]
            scores.append(OptionScore(choice_probability(logp_a, logp_b), logp_a, logp_b))
        return scores


def prompt_budget(max_prompt_length: int, context_length: int | None, reserved: int) -> int:
    """``min(max_prompt_length, context_length - reserved)``: the longest prompt that leaves room
    for ``reserved`` generated (or scored) tokens in a context of ``context_length``.

    Raises:
        ConfigError: nothing is left for the prompt.
    """
    budget = max_prompt_length
    if context_length is not None:
        budget = min(budget, context_length - reserved)
    if budget < 1:
        raise ConfigError(
            f"max_new_tokens: {reserved} tokens to generate leave no room for a prompt in the "
            f"model's context of {context_length} tokens; lower max_new_tokens (or "
            "edit_max_new_tokens, for critiques and revisions)"
        )
    return budget


# ---------------------------------------------------------------------------------------------
# OpenAI-compatible endpoint
# ---------------------------------------------------------------------------------------------


_JSON_KINDS = {dict: "an object", list: "a list", str: "a string"}


def missing_option_floor(tops: dict[str, float]) -> float:
    """A log-prob for an option the endpoint's top log-probs do not list: below every listed
    token (log 2 under the least), and at most the mass they leave, log(1 - Σ exp(top)). With
    only the sampled token given (top_logprobs off), the first bound alone made P(A) = 2/3
    whether A had probability 0.999 or 0.05."""
    floor = min(tops.values()) - math.log(2.0)
    left = 1.0 - sum(math.exp(v) for v in tops.values())
    return min(floor, math.log(left)) if left > 0 else floor


class EndpointLM:
    """A model behind an OpenAI-compatible API (see the module docstring).

    Args:
        client: the HTTP client (retries, back-off and timeouts live there).
        api: ``completions`` (raw prompts) or ``chat`` (each prompt sent as one user message).
        concurrency: requests in flight at once (the server batches them).
        top_logprobs: alternatives asked for when scoring options.
        stop: generated text is cut at the first of these strings (also sent to the server).
    """

    def __init__(
        self,
        client: OpenAIClient,
        *,
        api: str = "completions",
        concurrency: int = 8,
        top_logprobs: int = 5,
        stop: Sequence[str] = (),
    ):
        if api not in ("completions", "chat"):
            raise ValueError(f"api must be completions or chat, got {api!r}")
        self.client = client
        self.name = client.base_url
        self.api = api
        self.concurrency = max(1, concurrency)
        self.top_logprobs = top_logprobs
        self.stop = tuple(stop)

    def _map(self, fn: Callable[[Any], Any], items: list) -> list:
        if len(items) <= 1 or self.concurrency == 1:
            return [fn(x) for x in items]
        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(fn, items))

    def _call(self, prompt: str, **params: Any) -> dict:
        if self.api == "chat":
            if "logprobs" in params:
                params["top_logprobs"] = params.pop("logprobs")
                params["logprobs"] = True
            return self.client.chat([{"role": "user", "content": prompt}], **params)
        return self.client.completions(prompt, **params)

    @property
    def url(self) -> str:
        """Where requests go: the endpoint's completions or chat completions URL."""
        return self.client.base_url + (
            "/chat/completions" if self.api == "chat" else "/completions"
        )

    def _bad(self, where: str, problem: str, got: Any) -> EndpointAnswerError:
        """The error for an answer whose ``where`` (a path in it) has ``problem``."""
        shown = json.dumps(got, default=str)
        shown = shown if len(shown) <= 120 else shown[:117] + "..."
        return EndpointAnswerError(
            f"{self.url}: the answer is not in OpenAI's {self.api} shape: {where} {problem} "
            f"(got {shown})"
        )

    def _field(self, parent: dict, key: str, where: str, kind: type) -> Any:
        """``parent[key]``: None where absent or null, else a ``kind`` (dict, list or str)."""
        value = parent.get(key)
        if value is not None and not isinstance(value, kind):
            raise self._bad(f"{where}.{key}", f"is not {_JSON_KINDS[kind]} or null", value)
        return value

    def _logprob(self, value: Any, where: str) -> float:
        """A log-prob of the answer: a number, not NaN nor +inf."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self._bad(where, "is not a number", value)
        if math.isnan(value) or value == math.inf:
            raise self._bad(where, "is not a log-prob", value)
        return float(value)

    def _choice(self, body: dict) -> dict:
        """The answer's first choice (the client checked that ``choices`` is a non-empty list)."""
        choice = body["choices"][0]
        if not isinstance(choice, dict):
            raise self._bad("choices[0]", "is not an object", choice)
        return choice

    def _text(self, body: dict) -> str:
        """The text of the answer's first choice; a 200 answer without it is an
        `EndpointAnswerError` (a chat message's null content, e.g. a refusal, is "")."""
        choice = self._choice(body)
        if self.api == "chat":
            message = choice.get("message")
            if not isinstance(message, dict):
                raise self._bad("choices[0].message", "is missing or not an object", message)
            return self._field(message, "content", "choices[0].message", str) or ""
        if not isinstance(choice.get("text"), str):
            raise self._bad("choices[0].text", "is missing or not a string", choice.get("text"))
        return choice["text"]

    def generate(
        self, prompts: list[str], params: SamplingParams, seeds: Sequence[int]
    ) -> list[str]:
        extra = {"stop": list(self.stop)[:4]} if self.stop else {}

        def one(item: tuple[str, int]) -> str:
            prompt, seed = item
            body = self._call(
                prompt,
                max_tokens=params.max_new_tokens,
                temperature=params.temperature,
                top_p=params.top_p,
                seed=seed,
                **extra,
            )
            return cut_at_stop(self._text(body), self.stop)

        return self._map(one, list(zip(prompts, seeds, strict=True)))

    def option_scores(self, prompts: list[str], options: Sequence[str]) -> list[OptionScore]:
        prefix = _common_prefix(options)
        rests = [o[len(prefix) :] for o in options]
        # A chat reply opens a new message, whatever the user's message ended with: its first
        # token may start the whole option ("(A") as well as its remainder ("A").
        forms = [[r, o] if self.api == "chat" else [r] for r, o in zip(rests, options, strict=True)]

        def one(prompt: str) -> OptionScore:
            body = self._call(
                prompt + prefix, max_tokens=2, temperature=0.0, logprobs=self.top_logprobs
            )
            tops = self._top_logprobs(body)
            if tops is not None:
                found = [_match_logprob(tops, forms[i], forms[1 - i]) for i in (0, 1)]
                if found[0] is not None or found[1] is not None:
                    floor = missing_option_floor(tops)
                    logp_a = found[0] if found[0] is not None else floor
                    logp_b = found[1] if found[1] is not None else floor
                    return OptionScore(choice_probability(logp_a, logp_b), logp_a, logp_b)
            text = self._text(body)
            choice = parse_choice(prefix + text, options)
            p = 0.5 if choice is None else (1.0 if choice == 0 else 0.0)
            return OptionScore(p, source="parsed", text=text)

        return self._map(one, prompts)

    def _top_logprobs(self, body: dict) -> dict[str, float] | None:
        """Token -> log-prob of the first generated position, or None if not offered (no
        ``logprobs``, or empty ones). Log-probs of the wrong shape are an `EndpointAnswerError`
        naming the endpoint and the part of the answer at fault."""
        logprobs = self._field(self._choice(body), "logprobs", "choices[0]", dict)
        if logprobs is None:
            return None
        where = "choices[0].logprobs"
        if self.api == "chat":
            content = self._field(logprobs, "content", where, list)
            if not content:
                return None
            first = self._token_entry(content[0], f"{where}.content[0]")
            tops: dict[str, float] = {}
            alternatives = self._field(content[0], "top_logprobs", f"{where}.content[0]", list)
            for k, alt in enumerate(alternatives or []):
                token, value = self._token_entry(alt, f"{where}.content[0].top_logprobs[{k}]")
                tops[token] = value
            tops.setdefault(*first)
            return tops
        top = self._field(logprobs, "top_logprobs", where, list)
        if top and top[0] is not None:
            if not isinstance(top[0], dict):
                raise self._bad(f"{where}.top_logprobs[0]", "is not an object or null", top[0])
            if top[0]:
                return {
                    str(k): self._logprob(v, f"{where}.top_logprobs[0][{json.dumps(k)}]")
                    for k, v in top[0].items()
                }
        tokens = self._field(logprobs, "tokens", where, list)
        values = self._field(logprobs, "token_logprobs", where, list)
        if tokens and values and values[0] is not None:
            if not isinstance(tokens[0], str):
                raise self._bad(f"{where}.tokens[0]", "is not a string", tokens[0])
            return {tokens[0]: self._logprob(values[0], f"{where}.token_logprobs[0]")}
        return None

    def _token_entry(self, entry: Any, where: str) -> tuple[str, float]:
        """(token, log-prob) of a chat log-prob entry ``{"token", "logprob", ...}``."""
        if not isinstance(entry, dict):
            raise self._bad(where, "is not an object", entry)
        if not isinstance(entry.get("token"), str):
            raise self._bad(f"{where}.token", "is missing or not a string", entry.get("token"))
        if "logprob" not in entry:
            raise self._bad(f"{where}.logprob", "is missing", entry)
        return entry["token"], self._logprob(entry["logprob"], f"{where}.logprob")


def _match_logprob(
    tops: dict[str, float], forms: Sequence[str], others: Sequence[str]
) -> float | None:
    """log of the total probability of the tokens that start one of ``forms`` (an option's
    texts) but none of ``others`` (the other option's): tokens both could start with tell
    nothing."""
    mine, theirs = [f.lstrip() for f in forms], [f.lstrip() for f in others]
    values = [
        lp
        for token, lp in tops.items()
        if (t := token.strip())
        and any(f.startswith(t) for f in mine)
        and not any(f.startswith(t) for f in theirs)
    ]
    if not values:
        return None
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def load_text_model(
    spec: str,
    *,
    dtype: str = "auto",
    batch_size: int = 32,
    max_prompt_length: int = 1024,
    stop: Sequence[str] = (),
    endpoint_model: str = "",
    api: str = "completions",
    api_key_env: str = "OPENAI_API_KEY",
    timeout: float = 60.0,
    max_retries: int = 4,
    backoff: float = 1.0,
    concurrency: int = 8,
    top_logprobs: int = 20,
) -> TextModel:
    """A `LocalLM` for a directory or hub id, an `EndpointLM` for an ``http(s)://`` URL."""
    if is_endpoint(spec):
        client = OpenAIClient(
            spec,
            model=endpoint_model,
            api_key_env=api_key_env,
            timeout=timeout,
            max_retries=max_retries,
            backoff=backoff,
        )
        return EndpointLM(
            client, api=api, concurrency=concurrency, top_logprobs=top_logprobs, stop=stop
        )
    return LocalLM(
        spec, dtype=dtype, batch_size=batch_size, max_prompt_length=max_prompt_length, stop=stop
    )


# ---------------------------------------------------------------------------------------------
# Judging pairs
# ---------------------------------------------------------------------------------------------


@dataclass
class Pair:
    """Two responses to one prompt, as read from the input (``index`` is its position;
    ``source`` and ``line`` say where its record is, for error messages)."""

    index: int
    prompt: Any
    response_a: str
    response_b: str
    source: str = "<pairs>"
    line: int | None = None


def draw_principle(constitution: Constitution, seed: int, pair_index: int) -> ComparisonPrinciple:
    """The comparison principle of one pair: a deterministic draw from (seed, pair index), so a
    resumed run draws exactly what an uninterrupted one would."""
    if not constitution.comparison_principles:
        raise ValueError(f"{constitution.source}: no comparison_principles to label with")
    rng = random.Random(f"{seed}:{pair_index}")
    return rng.choice(constitution.comparison_principles)


class LMJudge:
    """A text model answering the constitution's multiple-choice question."""

    def __init__(
        self,
        lm: TextModel,
        constitution: Constitution,
        *,
        chain_of_thought: bool = False,
        sampling: SamplingParams | None = None,
    ):
        self.lm = lm
        self.name = lm.name
        self.constitution = constitution
        self.chain_of_thought = chain_of_thought
        self.sampling = sampling or SamplingParams(max_new_tokens=128, temperature=0.0)

    def judge(self, items: list[tuple[Pair, bool, ComparisonPrinciple]], seed: int) -> list[dict]:
        """One judgment per (pair, swapped, principle): a dict with ``p_first`` and details.

        ``seed`` is the run's: the chain-of-thought reasoning of (pair, order) is seeded with
        ``seed + 2 · pair index + (1 if swapped)``, whatever else is in ``items`` (an endpoint
        takes each prompt's seed; a local model samples a batch from its first).
        """
        fmt = self.constitution.prompts
        prompts = []
        for pair, swapped, principle in items:
            first, second = (
                (pair.response_b, pair.response_a)
                if swapped
                else (pair.response_a, pair.response_b)
            )
            prompts.append(
                self.constitution.comparison_prompt(
                    principle, pair.prompt, first, second, chain_of_thought=self.chain_of_thought
                )
            )
        reasoning = [""] * len(prompts)
        scored = prompts
        if self.chain_of_thought:
            seeds = [seed + 2 * pair.index + swapped for pair, swapped, _ in items]
            reasoning = self.lm.generate(prompts, self.sampling, seeds)
            scored = [p + r + fmt.cot_answer for p, r in zip(prompts, reasoning, strict=True)]
        scores = self.lm.option_scores(scored, fmt.options)
        out = []
        for (pair, swapped, principle), text, why, score in zip(
            items, prompts, reasoning, scores, strict=True
        ):
            out.append(
                {
                    "pair": pair.index,
                    "order": "ba" if swapped else "ab",
                    "principle": principle.name,
                    "p_first": score.p_first,
                    "logp_a": score.logp_a,
                    "logp_b": score.logp_b,
                    "source": score.source,
                    "answer": score.text,
                    "reasoning": why,
                    "judge_prompt": text,
                }
            )
        return out


class SimulatedJudge:
    """The embedded world's annotators as a judge (``judge=simulated``): for each pair one
    annotator is drawn (deterministically from seed and pair index); ``P(option A)`` is its
    Bradley-Terry probability that the first-shown response is better."""

    name = "simulated"

    def __init__(self, n_annotators: int = 5):
        from rlhfkit.synthetic import default_annotators

        self.annotators = default_annotators(n_annotators)

    @staticmethod
    def check_pairs(pairs: Sequence[Pair]) -> None:
        """Fail on the first pair whose prompt is not a text prompt of the embedded world.

        Raises:
            DataError: ``FILE:LINE: prompt: judge=simulated needs the embedded world's text
                prompts`` (the annotators score responses by the world's gold criteria).
        """
        from rlhfkit.synthetic.prompts import parse_prompt

        for pair in pairs:
            if not isinstance(pair.prompt, str) or parse_prompt(pair.prompt) is None:
                got = "a conversation" if isinstance(pair.prompt, list) else repr(pair.prompt)[:60]
                raise DataError(
                    pair.source,
                    pair.line,
                    "prompt",
                    f"judge=simulated needs the embedded world's text prompts (got {got})",
                )

    def judge(self, items: list[tuple[Pair, bool, ComparisonPrinciple]], seed: int) -> list[dict]:
        """One judgment per (pair, swapped, principle), as `LMJudge.judge`; each pair's
        annotator is drawn from the run's ``seed`` and the pair's index alone."""
        self.check_pairs([pair for pair, _, _ in items])
        out = []
        for pair, swapped, principle in items:
            annotator = random.Random(f"annotator:{seed}:{pair.index}").choice(self.annotators)
            first, second = (
                (pair.response_b, pair.response_a)
                if swapped
                else (pair.response_a, pair.response_b)
            )
            p = annotator.prob_prefers(pair.prompt, first, second)
            out.append(
                {
                    "pair": pair.index,
                    "order": "ba" if swapped else "ab",
                    "principle": principle.name,
                    "p_first": p,
                    "logp_a": None,
                    "logp_b": None,
                    "source": "simulated",
                    "annotator": annotator.name,
                }
            )
        return out


def soft_label(judgments: list[dict], *, clamp: tuple[float, float] | None = None) -> float:
    """P(response a beats response b) from a pair's judgments (one or both orders).

    Both orders: ``debiased_preference(p_ab, p_ba) = (p_ab + 1 - p_ba) / 2``; one order: ``p_ab``
    (or ``1 - p_ba``). ``clamp`` (chain of thought): clamped into ``[low, high]`` afterwards.
    """
    by_order = {j["order"]: float(j["p_first"]) for j in judgments}
    if "ab" in by_order and "ba" in by_order:
        p = debiased_preference(by_order["ab"], by_order["ba"])
    elif "ab" in by_order:
        p = by_order["ab"]
    else:
        p = 1.0 - by_order["ba"]
    if clamp is not None:
        p = clamp_probability(p, clamp[0], clamp[1])
    return p


def preference_record(
    pair: Pair, judgments: list[dict], judge_name: str, *, clamp: tuple[float, float] | None
) -> dict:
    """The preference record of a judged pair: ``chosen`` is the response with P >= 0.5 (a on a
    tie, which ``soft_label`` 0.5 marks as undecided) and ``soft_label`` = P(chosen beats
    rejected), in [0.5, 1]. After a conversation prompt the responses are assistant messages."""
    p_a = soft_label(judgments, clamp=clamp)
    a_wins = p_a >= 0.5
    return {
        "prompt": pair.prompt,
        "chosen": as_reply(pair.prompt, pair.response_a if a_wins else pair.response_b),
        "rejected": as_reply(pair.prompt, pair.response_b if a_wins else pair.response_a),
        "soft_label": p_a if a_wins else 1.0 - p_a,
        "principle": judgments[0]["principle"],
        "judge": judge_name,
    }


# ---------------------------------------------------------------------------------------------
# Settings recorded with the work, and what a run's judgments say about themselves
# ---------------------------------------------------------------------------------------------


def model_identity(spec: str) -> str:
    """How a model is named in recorded settings: a URL as its API base (``.../v1``), a hub id
    as given, a local directory as its absolute path (so ``runs/m`` and ``./runs/m`` are the same
    model) and ``@`` a digest of its files' names, sizes and modification times (so a model
    trained again in the same place is another model)."""
    from pathlib import Path

    if is_endpoint(spec):
        return normalise_base_url(spec)
    path = Path(spec)
    if not path.is_dir():
        return str(path.resolve()) if path.exists() else spec
    stats = [
        (f.name, f.stat().st_size, f.stat().st_mtime_ns)
        for f in sorted(path.iterdir())
        if f.is_file()
    ]
    digest = hashlib.sha256(json.dumps(stats).encode("utf-8")).hexdigest()[:12]
    return f"{path.resolve()}@{digest}"


def constitution_digest(constitution: Constitution, use: str) -> str:
    """``NAME@HASH`` of the parts of ``constitution`` that ``use`` reads: ``"comparison"``
    (`rlhfkit label`: comparison principles and templates) or ``"critique"`` (`cai revise`:
    critique principles, critique and revision templates, few-shot text)."""
    prompts = constitution.prompts
    if use == "comparison":
        parts: list[Any] = [
            [(p.name, p.question) for p in constitution.comparison_principles],
            prompts.comparison,
            prompts.cot_comparison,
            prompts.cot_answer,
            list(prompts.options),
            prompts.comparison_few_shot,
            list(prompts.stop),
        ]
    elif use == "critique":
        parts = [
            [
                (p.name, p.critique_request, p.revision_request)
                for p in constitution.critique_principles
            ],
            prompts.critique,
            prompts.revision,
            prompts.few_shot,
            list(prompts.stop),
        ]
    else:
        raise ValueError(f"use must be comparison or critique, got {use!r}")
    digest = hashlib.sha256(json.dumps(parts).encode("utf-8")).hexdigest()[:12]
    return f"{constitution.name}@{digest}"


def settings_changes(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``"key: recorded -> current"`` for every setting that differs (a key on one side only
    shows ``(unset)`` on the other), in ``current``'s order, then recorded-only keys."""
    changes = []
    for key in [*current, *(k for k in recorded if k not in current)]:
        old, new = recorded.get(key, "(unset)"), current.get(key, "(unset)")
        if old != new:
            changes.append(f"{key}: {_shown(old)} -> {_shown(new)}")
    return changes


def _shown(value: Any) -> str:
    return value if value == "(unset)" else json.dumps(value)


def settings_error(where: str, recorded: Any, current: dict[str, Any], what: str) -> str | None:
    """The one-line refusal for work at ``where`` (``FILE:LINE``) recorded with other settings
    than ``current``, or None when they are the same. ``what`` names the work ("judgments")."""
    if not isinstance(recorded, dict):
        return (
            f"{where}: settings: {what} without recorded settings (an older rlhfkit), so they "
            "cannot be checked against this run's; pass overwrite=true to start again"
        )
    changes = settings_changes(recorded, current)
    if not changes:
        return None
    return (
        f"{where}: settings: {what} made with other settings ({'; '.join(changes)}); rerun "
        "with those settings to continue, or pass overwrite=true to start again"
    )


__all__ = [
    "EndpointLM",
    "LMJudge",
    "LocalLM",
    "OptionScore",
    "Pair",
    "SimulatedJudge",
    "TextModel",
    "as_reply",
    "constitution_digest",
    "cut_at_stop",
    "draw_principle",
    "load_text_model",
    "model_identity",
    "parse_choice",
    "preference_record",
    "prompt_budget",
    "settings_changes",
    "settings_error",
    "soft_label",
]
