"""Calling `InvokeEndpointWithResponseStream` from asyncio, and what its failures mean to a client.

botocore is blocking, so each stream gets one thread that makes the call and iterates the event
stream, handing PayloadPart bytes to the event loop (`loop.call_soon_threadsafe`): one thread hop per
part, none per line. Closing the stream (client gone) shuts the socket down, which wakes the thread
even while it waits for the next byte, so the endpoint stops being read at once.

botocore is imported and its client built at the first request, not at import: the Lambda's start
path stays short, and a process that only serves /health never pays for it.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import AsyncIterator
from typing import Any

from gateway.errors import GatewayError
from gateway.settings import Settings

_client_lock = threading.Lock()
_clients: dict[tuple, Any] = {}


def runtime_client(settings: Settings):
    """The process's `sagemaker-runtime` client for these settings (botocore clients are thread-safe)."""
    key = (settings.region, settings.sagemaker_endpoint_url, settings.read_timeout_seconds,
           settings.connect_timeout_seconds, settings.max_pool_connections)
    client = _clients.get(key)
    if client is not None:
        return client
    with _client_lock:
        if key not in _clients:
            import botocore.config
            import botocore.session

            config = botocore.config.Config(
                read_timeout=settings.read_timeout_seconds,
                connect_timeout=settings.connect_timeout_seconds,
                # No retries here: a throttled caller gets 429 + Retry-After at once and retries itself
                # (the openai client does), instead of the gateway sleeping on its behalf.
                retries={"total_max_attempts": 1, "mode": "standard"},
                max_pool_connections=settings.max_pool_connections,
                tcp_keepalive=True,
            )
            _clients[key] = botocore.session.get_session().create_client(
                "sagemaker-runtime",
                region_name=settings.region,
                endpoint_url=settings.sagemaker_endpoint_url,
                config=config,
            )
        return _clients[key]


class StreamFailure(Exception):
    """The endpoint's stream failed after it started (ModelStreamError, InternalStreamFailure, a cut)."""

    def __init__(self, code: str, message: str, *, timed_out: bool = False):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.timed_out = timed_out

    def gateway_error(self) -> GatewayError:
        if self.timed_out:
            # The endpoint went quiet for longer than the read timeout (often before its first byte:
            # SageMaker accepts the call, then the model is slow): a timeout, not a broken stream.
            return GatewayError(504, f"the endpoint stopped sending: {self.message}", type="server_error",
                                code="upstream_timeout")
        return GatewayError(
            502,
            f"the model's stream failed mid-way ({self.code}): {self.message}",
            type="server_error",
            code=_snake(self.code),
        )


_END = object()


class EndpointStream:
    """One streaming call to the endpoint. `await open()` raises `GatewayError` for a call SageMaker
    refused; then `parts()` yields the PayloadPart bytes and raises `StreamFailure` if the stream breaks."""

    def __init__(self, settings: Settings, body: bytes):
        self._settings = settings
        self._body = body
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue = asyncio.Queue()
        self._closed = threading.Event()
        self._event_stream: Any = None

    async def open(self) -> None:
        threading.Thread(target=self._pump, name="endpoint-stream", daemon=True).start()
        first = await self._queue.get()
        if isinstance(first, BaseException):
            raise first
        # The first item is the "call accepted" marker.

    async def parts(self) -> AsyncIterator[bytes]:
        while True:
            item = await self._queue.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        """Stop reading the endpoint: called when the client goes away or the relay ends."""
        if self._closed.is_set():
            return
        self._closed.set()
        _shutdown_socket(self._event_stream)

    # the thread

    def _put(self, item: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the loop is gone (server shutting down)
            self._closed.set()

    def _pump(self) -> None:
        try:
            response = runtime_client(self._settings).invoke_endpoint_with_response_stream(
                EndpointName=self._settings.endpoint_name,
                Body=self._body,
                ContentType="application/json",
                Accept="application/jsonlines",
            )
        except Exception as err:  # every refusal becomes an HTTP error for the client
            self._put(call_error(err, self._settings))
            return
        self._event_stream = response["Body"]
        if self._closed.is_set():
            _shutdown_socket(self._event_stream)
        self._put(None)
        try:
            for event in self._event_stream:
                if self._closed.is_set():
                    break
                part = event.get("PayloadPart")
                if part is not None:
                    self._put(part["Bytes"])
            else:
                self._put(_END)
        except Exception as err:
            if not self._closed.is_set():
                self._put(stream_failure(err))
        finally:
            try:
                self._event_stream.close()
            except Exception:  # the connection is dropped either way
                pass


def _shutdown_socket(event_stream: Any) -> None:
    """Wake a thread blocked reading this stream: shut the socket down (closing alone does not wake it)."""
    raw = getattr(event_stream, "_raw_stream", None)
    connection = getattr(raw, "_connection", None) or getattr(raw, "connection", None)
    sock = getattr(connection, "sock", None)
    if sock is None:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def stream_failure(err: Exception) -> StreamFailure:
    from botocore.exceptions import ReadTimeoutError
    from urllib3.exceptions import ReadTimeoutError as Urllib3ReadTimeout  # what iterating the body raises

    response = getattr(err, "response", None)
    if isinstance(response, dict) and "Error" in response:
        error = response["Error"]
        return StreamFailure(error.get("Code") or "StreamError", error.get("Message") or str(err))
    if isinstance(err, ReadTimeoutError | Urllib3ReadTimeout | TimeoutError):
        return StreamFailure("ReadTimeout", f"no byte within the read timeout ({err})", timed_out=True)
    return StreamFailure("StreamBroken", f"the connection to SageMaker broke: {type(err).__name__}: {err}")


def call_error(err: Exception, settings: Settings) -> GatewayError:
    """What a refused `InvokeEndpointWithResponseStream` call means for the client."""
    from botocore import exceptions as boto

    retry = {"Retry-After": str(settings.retry_after_seconds)}
    endpoint = settings.endpoint_name
    if isinstance(err, boto.ClientError):
        error = err.response.get("Error", {})
        code = error.get("Code", "")
        message = error.get("Message", "") or str(err)
        if code in ("ThrottlingException", "ThrottledException", "TooManyRequestsException"):
            return GatewayError(429, f"SageMaker throttled the call to {endpoint}: {message}",
                                type="rate_limit_error", code="rate_limit_exceeded", headers=retry)
        if code == "ModelNotReadyException":
            return GatewayError(503, f"the model on endpoint {endpoint} is not ready yet: {message}",
                                type="server_error", code="model_not_ready", headers=retry)
        if code == "ServiceUnavailable":
            return GatewayError(503, f"SageMaker is unavailable for endpoint {endpoint}: {message}",
                                type="server_error", code="service_unavailable", headers=retry)
        if code == "ValidationError":
            if "not found" in message.lower() or "does not exist" in message.lower():
                return GatewayError(
                    503,
                    f"the SageMaker endpoint {endpoint} does not exist in {settings.region} (yet): {message}",
                    type="server_error", code="endpoint_not_found", headers=retry,
                )
            return GatewayError(400, f"SageMaker rejected the request: {message}", code="invalid_request")
        if code == "ModelError":
            return _model_error(err.response, message)
        if code in ("AccessDeniedException", "UnrecognizedClientException", "InvalidSignatureException",
                    "ExpiredTokenException"):
            return GatewayError(500, f"the gateway may not call endpoint {endpoint} ({code}): check its role",
                                type="server_error", code="gateway_misconfigured")
        return GatewayError(502, f"SageMaker failed the call ({code}): {message}", type="server_error",
                            code=_snake(code) or "upstream_error")
    if isinstance(err, boto.ReadTimeoutError):
        return GatewayError(504, f"endpoint {endpoint} did not answer within {settings.read_timeout_seconds:g} s",
                            type="server_error", code="upstream_timeout")
    if isinstance(err, boto.EndpointConnectionError | boto.ConnectTimeoutError | boto.ConnectionClosedError):
        return GatewayError(503, f"cannot reach the SageMaker runtime: {err}", type="server_error",
                            code="upstream_unreachable", headers=retry)
    if isinstance(err, boto.NoCredentialsError | boto.PartialCredentialsError):
        return GatewayError(500, "the gateway has no AWS credentials", type="server_error",
                            code="gateway_misconfigured")
    return GatewayError(502, f"calling SageMaker failed: {type(err).__name__}: {err}", type="server_error",
                        code="upstream_error")


def _model_error(response: dict, message: str) -> GatewayError:
    """The engine itself answered with an error (SageMaker's ModelError, 424): pass its verdict on."""
    original = response.get("OriginalStatusCode")
    text = response.get("OriginalMessage") or message
    engine_message = _engine_message(text)
    if isinstance(original, int) and 400 <= original < 500:
        return GatewayError(400 if original != 429 else 429, f"the model rejected the request: {engine_message}",
                            code="model_rejected_request")
    return GatewayError(502, f"the model failed ({original}): {engine_message}", type="server_error",
                        code="model_error")


def _engine_message(text: str) -> str:
    """vLLM/llama.cpp wrap their message in {"error": {"message": ...}} or {"message": ...}."""
    import json

    try:
        parsed = json.loads(text)
    except (TypeError, ValueError):
        return text
    if isinstance(parsed, dict):
        inner = parsed.get("error", parsed)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return inner["message"]
        if isinstance(inner, str):
            return inner
    return text


def _snake(code: str) -> str:
    out = []
    for i, ch in enumerate(code):
        if ch.isupper() and i and not code[i - 1].isupper():
            out.append("_")
        out.append(ch.lower())
    return "".join(out)
