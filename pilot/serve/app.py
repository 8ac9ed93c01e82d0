"""The HTTP side: OpenAI's chat-completions routes (streaming and not), ``/v1/models``, ``/health``, ``/metrics``.

Every route but ``/health`` needs the API key (``Authorization: Bearer KEY``); every error is OpenAI's error JSON
(``{"error": {"message", "type", "param", "code"}}``) with its 4xx or 5xx status. Each request is logged once, as
a JSON line with its id, status, timings and sizes (never its text or images), and counted in ``/metrics``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pilot.serve import logs
from pilot.serve.batcher import Job
from pilot.serve.chat import ApiError, build_prompt, load_images, parse_chat

if TYPE_CHECKING:
    from pilot.serve.runtime import Runtime

OPEN_PATHS = frozenset({"/health"})
ROUTES = frozenset({"/health", "/metrics", "/v1/models", "/v1/chat/completions"})


@dataclass
class Accepted:
    """A request that passed every check and is queued: its job, and where the worker sends its events."""

    job: Job
    events: asyncio.Queue
    stream: bool
    include_usage: bool


def error_response(error: ApiError, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


class ApiKeyMiddleware:
    """401 on every path but ``/health`` without ``Authorization: Bearer <the key>`` (unknown paths too, so the
    routes cannot be probed without it). Compared in constant time."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self.api_key = api_key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        scheme, _, token = Headers(scope=scope).get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            error = ApiError(401, "missing API key: send the header 'Authorization: Bearer KEY'",
                             code="invalid_api_key")
        elif not hmac.compare_digest(token.strip().encode(), self.api_key):
            error = ApiError(401, "invalid API key", code="invalid_api_key")
        else:
            await self.app(scope, receive, send)
            return
        await error_response(error, {"WWW-Authenticate": "Bearer"})(scope, receive, send)


class ObserveMiddleware:
    """Counts and times every request by route and status, and logs it once when its last byte is sent."""

    def __init__(self, app: ASGIApp, runtime: Runtime) -> None:
        self.app = app
        self.metrics = runtime.metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # unless a response starts
        state = scope.setdefault("state", {})

        async def observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observed)
        finally:
            route = scope["path"] if scope["path"] in ROUTES else "other"
            seconds = time.perf_counter() - started
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.request_seconds.labels(route).observe(seconds)
            if route not in ("/health", "/metrics") or status >= 400:
                logs.event("request", method=scope["method"], route=route, status=status,
                           duration_ms=round(seconds * 1000, 2), **state.get("log", {}))


def create_app(runtime: Runtime, api_key: str) -> FastAPI:
    """The app over ``runtime``; its lifespan starts the runtime and, at shutdown, drains and closes it."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime.start()
        logs.event("listening", host=runtime.settings.host, port=runtime.port, model=runtime.model_name,
                   arm=runtime.arm, arm_source=runtime.source, shadow=runtime.settings.shadow,
                   shadow_rate=runtime.settings.shadow_rate if runtime.shadow else None,
                   run_id=runtime.live_run.run_id if runtime.live_run else None,
                   run=runtime.live_run.name if runtime.live_run else None)
        try:
            yield
        finally:
            await run_in_threadpool(runtime.close)

    app = FastAPI(title="pilot serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(ApiKeyMiddleware, api_key=api_key)
    app.add_middleware(ObserveMiddleware, runtime=runtime)  # added last: outermost, so 401s are counted too

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        request.state.log = {**getattr(request.state, "log", {}), "error": error.message[:200]}
        return error_response(error)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        message = {404: f"no route {request.url.path}", 405: f"{request.method} is not allowed on {request.url.path}"}
        return error_response(ApiError(error.status_code, message.get(error.status_code, str(error.detail))))

    @app.exception_handler(Exception)
    async def server_error(request: Request, error: Exception) -> JSONResponse:
        logs.event("unhandled_error", logs.logging.ERROR, route=request.url.path,
                   error=f"{type(error).__name__}: {error}")
        return error_response(ApiError(500, f"internal error ({type(error).__name__}); the server goes on"))

    @app.get("/health")
    async def health() -> JSONResponse:
        if not runtime.batcher.alive:
            return JSONResponse({"status": "unavailable", "reason": "the model worker is not running"},
                                status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(runtime.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    def model_card() -> dict:
        return {"id": runtime.model_name, "object": "model", "created": runtime.created,
                "owned_by": "transprune-pilot", "arm": runtime.arm, "shadow": runtime.settings.shadow}

    @app.get("/v1/models")
    async def models() -> JSONResponse:
        return JSONResponse({"object": "list", "data": [model_card()]})

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> JSONResponse:
        if model_id != runtime.model_name:
            raise ApiError(404, f"model {model_id!r} is not served here; /v1/models lists {runtime.model_name!r}",
                           param="model", code="model_not_found")
        return JSONResponse(model_card())

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        request_id = f"chatcmpl-{uuid.uuid4().hex}"
        fields: dict = {"request_id": request_id}
        if "x-request-id" in request.headers:  # a gateway's own id, logged beside ours to follow a request through
            fields["client_request_id"] = request.headers["x-request-id"][:128]
        request.state.log = fields
        with runtime.batcher.arriving():  # a batch being gathered waits for this request, shadow work stops
            accepted = await _accept(request, request_id, fields)
        try:  # its batch prepared: the prompt fits (or a 4xx comes here, before any response has started)
            fields["prompt_tokens"] = await _started(accepted.events)
        except asyncio.CancelledError:
            accepted.job.cancelled = True
            raise
        headers = {"x-request-id": request_id}
        if accepted.stream:
            return StreamingResponse(_stream(accepted, runtime.model_name, fields), media_type="text/event-stream",
                                     headers={**headers, "cache-control": "no-cache"})
        try:
            info = await _answer(accepted.events)
        except asyncio.CancelledError:
            accepted.job.cancelled = True
            raise
        fields.update(completion_tokens=info["completion_tokens"], finish_reason=info["finish_reason"],
                      batch_size=info["batch_size"])
        return JSONResponse({
            "id": request_id, "object": "chat.completion", "created": int(time.time()), "model": runtime.model_name,
            "system_fingerprint": runtime.arm,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": info["text"]}, "logprobs": None,
                         "finish_reason": info["finish_reason"]}],
            "usage": _usage(info)}, headers=headers)

    async def _accept(request: Request, request_id: str, fields: dict) -> Accepted:
        """Read and check the request, decode its images, queue it; 4xx on the first problem."""
        body = await _read_body(request, runtime.max_body_bytes)
        chat = parse_chat(body, runtime.limits)
        fields.update(stream=chat.stream, images=len(chat.images))
        if chat.model != runtime.model_name:
            raise ApiError(404, f"model {chat.model!r} is not served here; /v1/models lists {runtime.model_name!r}",
                           param="model", code="model_not_found")
        images = await run_in_threadpool(load_images, chat.images, runtime.limits)
        prompt = build_prompt(runtime.loaded, chat.turns)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def deliver(event: tuple) -> None:  # from the worker thread
            with contextlib.suppress(RuntimeError):  # the loop is gone (the server stopped): nobody waits any more
                loop.call_soon_threadsafe(events.put_nowait, event)

        job = Job(id=request_id, prompt=prompt, images=images, max_tokens=chat.max_tokens, deliver=deliver,
                  max_tokens_given=chat.max_tokens_given)
        fields["max_tokens"] = chat.max_tokens
        runtime.batcher.submit(job)
        return Accepted(job, events, chat.stream, chat.include_usage)

    return app


async def _read_body(request: Request, limit_bytes: int) -> bytes:
    """The body, refused with a 413 as soon as it is known to be over ``limit_bytes`` (never read whole)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(400, "the Content-Length header is not a number")
        if int(declared) > limit_bytes:
            raise _body_too_large(int(declared), limit_bytes)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit_bytes:
            raise _body_too_large(size, limit_bytes)
        chunks.append(chunk)
    return b"".join(chunks)


def _body_too_large(size: int, limit_bytes: int) -> ApiError:
    return ApiError(413, f"the request body is over this server's limit of {limit_bytes / 2**20:g} MiB "
                         f"(--max-body-mb; at least {size / 2**20:.1f} MiB sent)", code="request_too_large")


async def _started(events: asyncio.Queue) -> int:
    kind, *rest = await events.get()
    if kind == "error":
        raise rest[0]
    return rest[0]


async def _answer(events: asyncio.Queue) -> dict:
    while True:
        kind, *rest = await events.get()
        if kind == "done":
            return rest[0]
        if kind == "error":
            raise rest[0]


def _usage(info: dict) -> dict:
    return {"prompt_tokens": info["prompt_tokens"], "completion_tokens": info["completion_tokens"],
            "total_tokens": info["prompt_tokens"] + info["completion_tokens"]}


async def _stream(accepted: Accepted, model: str, fields: dict) -> AsyncIterator[str]:
    """Server-sent events: the role, a chunk per piece of new text, the finish reason, [DONE]."""
    job, include_usage = accepted.job, accepted.include_usage
    created = int(time.time())

    def chunk(delta: dict, finish_reason: str | None = None) -> str:
        return "data: " + json.dumps({
            "id": job.id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}) + "\n\n"

    try:
        yield chunk({"role": "assistant", "content": ""})
        chunks = 0
        while True:
            kind, *rest = await accepted.events.get()
            if kind == "delta":
                chunks += 1
                yield chunk({"content": rest[0]})
            elif kind == "done":
                info = rest[0]
                fields.update(completion_tokens=info["completion_tokens"], finish_reason=info["finish_reason"],
                              batch_size=info["batch_size"], chunks=chunks)
                yield chunk({}, info["finish_reason"])
                if include_usage:
                    yield "data: " + json.dumps({"id": job.id, "object": "chat.completion.chunk", "created": created,
                                                 "model": model, "choices": [], "usage": _usage(info)}) + "\n\n"
                yield "data: [DONE]\n\n"
                return
            else:
                error: ApiError = rest[0]
                fields.update(error=error.message[:200], error_status=error.status)
                yield "data: " + json.dumps(error.body()) + "\n\n"
                return
    finally:
        if not job.done:
            job.cancelled = True  # the client went away: its row stops at the next step
