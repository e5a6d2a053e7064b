"""A small client for OpenAI-compatible HTTP APIs (`rlhfkit serve`, vLLM, hosted endpoints).

Only what the AI labeller and the critique-and-revise loop need: `/v1/models`,
`/v1/completions` and `/v1/chat/completions`, with timeouts, retries and exponential back-off.

Retried (up to ``max_retries`` more times, waiting ``backoff * 2**attempt`` seconds, capped at
``max_backoff``): a connection that fails or times out, HTTP 429 and 5xx, and a body that is not
the JSON object expected. Any other 4xx is the caller's mistake and fails at once with the
server's message. After the last try an `EndpointError` says what went wrong, where, and how
many times it was tried. The callers check the inside of an answer themselves and raise
`EndpointAnswerError` (an `EndpointError`) where it is not the shape promised.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import httpx

from rlhfkit.errors import RlhfkitError


class EndpointError(RlhfkitError):
    """An OpenAI-compatible endpoint was down, too slow, or answered something unusable."""


class EndpointAnswerError(EndpointError):
    """An endpoint answered (HTTP 200, JSON) but not in the shape its API promises: a choice, a
    message or a log-prob of the wrong type or missing. Not retried: such an endpoint answers
    the same way again."""


def normalise_base_url(url: str) -> str:
    """``http://host:8000``, ``http://host:8000/`` and ``http://host:8000/v1`` -> ``.../v1``."""
    url = url.rstrip("/")
    for suffix in ("/chat/completions", "/completions"):
        if url.endswith(suffix):
            url = url[: -len(suffix)]
    return url if url.endswith("/v1") else url + "/v1"


def is_endpoint(spec: str) -> bool:
    return spec.startswith(("http://", "https://"))


class OpenAIClient:
    """Synchronous client; thread-safe (one `httpx.Client` shared by a thread pool).

    Args:
        base_url: the endpoint (``/v1`` is added when missing).
        model: the model name sent with each request; empty = the first of ``/v1/models``.
        api_key: bearer token; None reads the environment variable ``api_key_env``.
        api_key_env: where to read the key from when ``api_key`` is None.
        timeout: seconds for one request (connect, read and write each).
        max_retries: extra tries after the first.
        backoff: first wait in seconds; doubles with each retry.
        max_backoff: longest wait.
    """

    def __init__(
        self,
        base_url: str,
        *,
        model: str = "",
        api_key: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        timeout: float = 60.0,
        max_retries: int = 4,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
    ):
        self.base_url = normalise_base_url(base_url)
        self.max_retries = max(0, max_retries)
        self.backoff = backoff
        self.max_backoff = max_backoff
        key = api_key if api_key is not None else os.environ.get(api_key_env, "")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._http = httpx.Client(timeout=httpx.Timeout(timeout), headers=headers)
        self.retries_used = 0  # total retries over the client's life (reported in summaries)
        self._model = model

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> OpenAIClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def model(self) -> str:
        if not self._model:
            models = self.models()
            if not models:
                raise EndpointError(f"{self.base_url}/models: the endpoint serves no model")
            self._model = models[0]
        return self._model

    # --- API ---------------------------------------------------------------------------------
    def models(self) -> list[str]:
        body = self._request("GET", "/models")
        data = body.get("data")
        if not isinstance(data, list):
            raise EndpointError(f"{self.base_url}/models: answer has no 'data' list")
        return [str(m.get("id")) for m in data if isinstance(m, dict)]

    def completions(self, prompt: str, **params: Any) -> dict:
        """POST /v1/completions; returns the decoded JSON (with at least one choice)."""
        return self._request(
            "POST", "/completions", {"model": self.model, "prompt": prompt, **params}, "choices"
        )

    def chat(self, messages: list[dict], **params: Any) -> dict:
        """POST /v1/chat/completions; returns the decoded JSON (with at least one choice)."""
        return self._request(
            "POST",
            "/chat/completions",
            {"model": self.model, "messages": messages, **params},
            "choices",
        )

    # --- transport ---------------------------------------------------------------------------
    def _request(
        self, method: str, path: str, payload: dict | None = None, required: str | None = None
    ) -> dict:
        url = self.base_url + path
        tries = self.max_retries + 1
        problem = ""
        for attempt in range(tries):
            if attempt:
                self.retries_used += 1
                time.sleep(min(self.max_backoff, self.backoff * 2 ** (attempt - 1)))
            try:
                response = self._http.request(method, url, json=payload)
            except httpx.TimeoutException:
                problem = f"no answer within {self._http.timeout.read:g} s (timeout)"
                continue
            except httpx.TransportError as err:
                problem = f"not reachable ({type(err).__name__}: {err})"
                continue
            if response.status_code == 429 or response.status_code >= 500:
                problem = f"HTTP {response.status_code}: {_error_text(response)}"
                continue
            if response.status_code >= 400:
                raise EndpointError(f"{url}: HTTP {response.status_code}: {_error_text(response)}")
            try:
                body = response.json()
            except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
                problem = f"malformed JSON in the answer: {response.text[:120]!r}"
                continue
            if not isinstance(body, dict) or (
                required and not (isinstance(body.get(required), list) and body[required])
            ):
                problem = f"answer is not an OpenAI response (no {required!r}): {str(body)[:120]}"
                continue
            return body
        raise EndpointError(f"{url}: {problem}; gave up after {tries} tries")


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            return str(body["error"].get("message", body["error"]))
        return str(body)[:200]
    except ValueError:
        return response.text[:200]


__all__ = [
    "EndpointAnswerError",
    "EndpointError",
    "OpenAIClient",
    "is_endpoint",
    "normalise_base_url",
]
