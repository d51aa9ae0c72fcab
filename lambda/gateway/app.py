"""The ASGI app: `POST /v1/chat/completions` (streamed and not), `GET /v1/models`, `GET /health`.

`uvicorn gateway.app:app` builds it from the `GATEWAY_*` environment at first use; tests and tools
call `create_app(settings)`. Every request leaves one JSON log line (an EMF record once the endpoint
was called), and never logs a header or a key.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from gateway.auth import KeyCheck
from gateway.chat_request import ChatRequest, parse_chat_request
from gateway.errors import GatewayError
from gateway.metrics import StreamMeter, emf_record, stdout_emitter
from gateway.relay import Chunks, collect, sse_stream
from gateway.sagemaker import EndpointStream, StreamFailure
from gateway.settings import Settings

log = logging.getLogger("gateway")
Emit = Callable[[dict[str, Any]], None]

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
# CORS (only for GATEWAY_CORS_ORIGINS): what the browser may send, and which reply headers its page may read.
CORS_ALLOW_METHODS = ("GET", "POST")
CORS_ALLOW_HEADERS = ("authorization", "content-type", "x-api-key")
CORS_EXPOSE_HEADERS = ("X-Request-Id", "X-Completion-Tokens", "X-TTFT-MS", "X-Tokens-Per-Second", "X-Cost-Per-1K-USD",
                       "Retry-After")
CORS_MAX_AGE_SECONDS = 600


class ClientGone(Exception):
    """The client disconnected before its reply was ready."""


class SSEResponse(StreamingResponse):
    """A streamed response that notices the client leaving even while no chunk is being sent (a slow
    first token), and always closes its iterator, so the endpoint stream is closed at once."""

    media_type = "text/event-stream"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as group:

                async def stream() -> None:
                    try:
                        await self.stream_response(send)
                    except OSError:  # the client went away mid-write
                        pass
                    group.cancel_scope.cancel()

                group.start_soon(stream)
                await self.listen_for_disconnect(receive)
                group.cancel_scope.cancel()
        finally:
            await self.body_iterator.aclose()  # type: ignore[attr-defined]


def create_app(settings: Settings | None = None, *, emit: Emit | None = None) -> Starlette:
    settings = settings or Settings.from_env()
    emit = emit or stdout_emitter()
    keys = KeyCheck(settings)

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "endpoint": settings.endpoint_name, "model": settings.model_id})

    async def models(request: Request) -> Response:
        try:
            await _authenticate(keys, request)
        except GatewayError as err:
            return error_response(err)
        return JSONResponse({
            "object": "list",
            "data": [{"id": settings.model_id, "object": "model", "created": 0, "owned_by": "llm-inference",
                      "max_model_len": settings.max_model_len}],
        })

    async def chat_completions(request: Request) -> Response:
        request_id = _request_id(request)
        properties: dict[str, Any] = {"RequestId": request_id, "ModelId": settings.model_id}

        def log_line(meter: StreamMeter | None, status: int, outcome: str, **extra: Any) -> None:
            record = emf_record(
                namespace=settings.metrics_namespace,
                endpoint_name=settings.endpoint_name,
                meter=meter,
                properties={**properties, "Status": status, "Outcome": outcome, **extra},
            )
            try:
                emit(record)
            except Exception:  # a broken log sink must not fail the request
                log.exception("could not emit the metrics record")

        try:
            await _authenticate(keys, request)
            chat = parse_chat_request(
                await _read_body(request, settings.max_body_bytes),
                model_id=settings.model_id,
                max_model_len=settings.max_model_len,
            )
            properties["Stream"] = chat.stream
            meter = StreamMeter(settings.price_per_hour)
            endpoint = EndpointStream(settings, chat.endpoint_body())
            await endpoint.open()
        except GatewayError as err:
            log_line(None, err.status, err.code or err.type)
            return error_response(err, request_id)

        chunks = Chunks(meter)
        if chat.stream:
            return SSEResponse(
                _relayed(endpoint, chat, chunks, log_line),
                headers={**SSE_HEADERS, "X-Request-Id": request_id},
            )
        try:
            completion = await _until_disconnect(request.receive, lambda: collect(endpoint.parts(), chunks))
        except ClientGone:
            log_line(meter, 499, "client_disconnected", TokensCountedFrom=meter.tokens_counted_from)
            return Response(status_code=499)
        except StreamFailure as failure:
            err = failure.gateway_error()
            log_line(meter, err.status, err.code or "stream_failure", TokensCountedFrom=meter.tokens_counted_from)
            return error_response(err, request_id)
        finally:
            endpoint.close()
        log_line(meter, 200, "ok", TokensCountedFrom=meter.tokens_counted_from)
        return JSONResponse(completion, headers={**meter.headers(), "X-Request-Id": request_id})

    async def not_found(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 404)
        message = (f"{request.method} {request.url.path} is not allowed" if status == 405
                   else f"no route {request.url.path}; this gateway serves /v1/chat/completions and /v1/models")
        return error_response(GatewayError(status, message, code="not_found" if status == 404 else "method_not_allowed"))

    async def server_error(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error in %s %s", request.method, request.url.path)
        return error_response(GatewayError(500, "the gateway failed unexpectedly; see its log", type="server_error",
                                           code="internal_error"))

    return Starlette(
        routes=[
            Route("/health", health, methods=["GET"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        ],
        exception_handlers={HTTPException: not_found, Exception: server_error},
        # Starlette answers an unhandled exception outside every user middleware (ServerErrorMiddleware), so
        # that 500 would lack the CORS headers; answered inside CORS instead, the page can read it.
        middleware=[*cors_middleware(settings), Middleware(UnhandledErrorsInsideCors, handler=server_error)],
    )


class UnhandledErrorsInsideCors:
    """Turns an exception raised before the reply started into `handler`'s response (the 500 in the OpenAI
    shape); once a reply has started there is nothing to replace, so it goes on up as before."""

    def __init__(self, app, handler: Callable[[Request, Exception], Awaitable[Response]]):
        self.app = app
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:
            if started:
                raise
            response = await self.handler(Request(scope, receive), exc)
            await response(scope, receive, send)


def cors_middleware(settings: Settings) -> list[Middleware]:
    """Starlette's CORS middleware for the configured origins only (none: no CORS headers at all).

    It answers a preflight (OPTIONS with Origin and Access-Control-Request-Method) itself, before routing
    and so before the key check: browsers send no credentials on a preflight (Fetch standard, CORS-preflight
    request). An origin not on the list gets a 400 preflight and no Access-Control-Allow-Origin, so the
    browser keeps the reply from that page. No credentials mode: the key travels in a header the page sets.
    """
    if not settings.cors_origins:
        return []
    return [Middleware(
        CORSMiddleware,
        allow_origins=list(settings.cors_origins),
        allow_methods=list(CORS_ALLOW_METHODS),
        allow_headers=list(CORS_ALLOW_HEADERS),
        expose_headers=list(CORS_EXPOSE_HEADERS),
        allow_credentials=False,
        max_age=CORS_MAX_AGE_SECONDS,
    )]


async def _relayed(endpoint: EndpointStream, chat: ChatRequest, chunks: Chunks, log_line) -> AsyncIterator[bytes]:
    outcome, status = "client_disconnected", 499
    try:
        async for data in sse_stream(endpoint.parts(), chat, chunks):
            yield data
        if chunks.failure is None:
            outcome, status = "ok", 200
        else:
            err = chunks.failure.gateway_error()
            outcome, status = err.code or "stream_failure", err.status
    finally:
        endpoint.close()
        log_line(chunks.meter, status, outcome, TokensCountedFrom=chunks.meter.tokens_counted_from)


async def _authenticate(keys: KeyCheck, request: Request) -> None:
    if not keys.enabled:
        return
    # The first check may read the secret (a blocking call): keep it off the event loop.
    await anyio.to_thread.run_sync(keys.check, request.headers)


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(int(declared), limit)
    body = bytearray()
    async for piece in request.stream():
        body += piece
        if len(body) > limit:
            raise _too_large(len(body), limit)
    return bytes(body)


def _too_large(size: int, limit: int) -> GatewayError:
    return GatewayError(400, f"the request body is {size} bytes or more; the limit is {limit} bytes "
                             "(GATEWAY_MAX_BODY_BYTES)", code="request_too_large")


async def _until_disconnect(receive: Receive, work: Callable[[], Awaitable[Any]]) -> Any:
    result: list[Any] = []
    failure: list[BaseException] = []
    async with anyio.create_task_group() as group:

        async def run() -> None:
            try:
                result.append(await work())
            except Exception as err:  # re-raised below as itself, not wrapped in an ExceptionGroup
                failure.append(err)
            group.cancel_scope.cancel()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            group.cancel_scope.cancel()

        group.start_soon(run)
        group.start_soon(watch)
    if failure:
        raise failure[0]
    if not result:
        raise ClientGone()
    return result[0]


def _request_id(request: Request) -> str:
    # Behind API Gateway the Lambda Web Adapter passes the request context on; reuse its id.
    context = request.headers.get("x-amzn-request-context")
    if context:
        try:
            found = json.loads(context).get("requestId")
            if isinstance(found, str) and found:
                return found
        except (ValueError, AttributeError):
            pass
    return uuid.uuid4().hex


def error_response(err: GatewayError, request_id: str | None = None) -> JSONResponse:
    headers = dict(err.headers)
    if request_id:
        headers["X-Request-Id"] = request_id
    return JSONResponse(err.payload(), status_code=err.status, headers=headers)


def __getattr__(name: str) -> Any:
    # `uvicorn gateway.app:app`: build the app from the environment on first access, once.
    if name == "app":
        built = create_app()
        globals()["app"] = built
        return built
    raise AttributeError(name)

