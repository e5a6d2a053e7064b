"""HTTP errors in OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``, for the
servers of ``rlhfkit serve`` (text generation and the reward scorer): the exception a handler
raises to refuse a request, the handlers that answer every error of an app in that shape, and
the request body read as JSON within a size limit (413 past it, chunked or not).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException


class ApiError(Exception):
    """A request the server refuses, reported in OpenAI's error shape."""

    def __init__(
        self, message: str, param: str | None = None, status: int = 400, code: str | None = None
    ):
        super().__init__(message)
        self.message, self.param, self.status, self.code = message, param, status, code


def error_body(
    message: str,
    kind: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> dict:
    """OpenAI's error shape: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error of ``app`` in OpenAI's shape: refused requests (`ApiError`), unknown
    paths (404), wrong methods (405, with its ``Allow`` header) and unexpected failures (500)."""

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, err: ApiError) -> JSONResponse:
        return JSONResponse(
            error_body(err.message, param=err.param, code=err.code), status_code=err.status
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            error_body(_http_message(request, err)),
            status_code=err.status_code,
            headers=err.headers,
        )

    @app.exception_handler(Exception)
    async def _server_error(_request: Request, err: Exception) -> JSONResponse:
        message = f"internal error: {type(err).__name__}: {err}"
        return JSONResponse(error_body(message, "server_error"), status_code=500)


def _http_message(request: Request, err: StarletteHTTPException) -> str:
    """What a routing error (404, 405, ...) means for this request, in words."""
    where = f"{request.method} {request.url.path}"
    if err.status_code == 404:
        return f"no such endpoint: {where}"
    if err.status_code == 405:
        headers = {key.lower(): value for key, value in (err.headers or {}).items()}
        allowed = headers.get("allow", "")
        return f"{where}: method not allowed" + (f"; use {allowed}" if allowed else "")
    return f"{where}: {err.detail}"


async def read_json_body(request: Request, max_bytes: int) -> Any:
    """The request's body parsed as JSON; a body over ``max_bytes`` is refused with 413.

    A ``Content-Length`` over the limit is refused before anything is read; otherwise bytes are
    counted as they arrive, so a chunked body (no ``Content-Length``) is cut off at the limit
    too, and never held whole. Parsing runs off the event loop.
    """
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(max_bytes)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise _too_large(max_bytes)
        chunks.append(chunk)
    raw = b"".join(chunks)
    try:
        return await asyncio.to_thread(json.loads, raw)
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError, RecursionError):
        raise ApiError("the request body is not valid JSON") from None


def _too_large(max_bytes: int) -> ApiError:
    return ApiError(
        f"the request body is larger than {max_bytes} bytes (the server's max_request_bytes)",
        status=413,
    )


__all__ = ["ApiError", "error_body", "install_error_handlers", "read_json_body"]
