"""A local SageMaker-runtime endpoint that the real boto3/botocore client talks to.

It answers `InvokeEndpointWithResponseStream` (POST /endpoints/{name}/invocations-response-stream) in
the real AWS event-stream wire format (prelude with total and headers length, prelude CRC32, headers,
payload, message CRC32; `PayloadPart` events, `ModelStreamError`/`InternalStreamFailure` exception
messages) and `InvokeEndpoint` (POST /endpoints/{name}/invocations), with rest-json errors
(`ThrottlingException`, `ValidationError` for an unknown endpoint, `ModelError`, ...). Point a client at
it with `endpoint_url=emulator.endpoint_url` and any credentials.

What answers behind an endpoint name is a backend:
- `Scripted`: replays JSON lines with timing and faults (`Reply`), or builds them per request
  (`synthetic_reply`, a fake engine that honours `max_tokens` and `stream_options.include_usage`).
- `Forward`: relays to any OpenAI-compatible server (llama.cpp, vLLM), turning its SSE into LMI-style
  JSON lines (one `chat.completion.chunk` per line, no `data: ` prefix, no `[DONE]`).
- `LmiVllm`: the LMI v15 model server in front of a real vLLM started from the Model's container
  environment (`local/lmi.py`): LMI's request handling, served name, stream format and error shapes.

In-process: `with SageMakerRuntimeEmulator({"llm": Forward("http://127.0.0.1:8080/v1")}) as emu: ...`.
CLI: `python -m local.sagemaker_runtime --forward http://127.0.0.1:8080/v1 --port 8081`.
"""

from __future__ import annotations

import argparse
import asyncio
import binascii
import itertools
import json
import struct
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import ClientError, ClientSession, ClientTimeout, TCPConnector, web

from bench.backend import KEEPALIVE_S, closed_under_us

ACCOUNT_ID = "123456789012"
EVENT_STREAM_CONTENT_TYPE = "application/vnd.amazon.eventstream"
MODEL_CONTENT_TYPE = "application/jsonlines"


# --- the event-stream wire format -------------------------------------------------------------------

_STRING_HEADER = 7  # header value type "string" in the event-stream encoding


def encode_message(headers: Mapping[str, str], payload: bytes) -> bytes:
    """One event-stream message: prelude (total length, headers length), prelude CRC, headers, payload, CRC."""
    encoded_headers = bytearray()
    for name, value in headers.items():
        name_bytes, value_bytes = name.encode(), value.encode()
        encoded_headers += struct.pack(">B", len(name_bytes)) + name_bytes
        encoded_headers += struct.pack(">BH", _STRING_HEADER, len(value_bytes)) + value_bytes
    total_length = 12 + len(encoded_headers) + len(payload) + 4
    prelude = struct.pack(">II", total_length, len(encoded_headers))
    message = prelude + struct.pack(">I", binascii.crc32(prelude)) + bytes(encoded_headers) + payload
    return message + struct.pack(">I", binascii.crc32(message))


def payload_part(data: bytes) -> bytes:
    return encode_message(
        {":event-type": "PayloadPart", ":content-type": "application/octet-stream", ":message-type": "event"}, data
    )


def stream_exception(kind: str, message: str, error_code: str | None = None) -> bytes:
    """A modelled exception inside the stream; botocore raises it as `EventStreamError` while iterating."""
    body: dict[str, Any] = {"Message": message}
    if error_code:
        body["ErrorCode"] = error_code
    return encode_message(
        {":exception-type": kind, ":content-type": "application/json", ":message-type": "exception"},
        json.dumps(body).encode(),
    )


# --- errors a backend can raise -----------------------------------------------------------------------


class ServiceError(Exception):
    """An error reply of the SageMaker runtime API, sent instead of a stream (before any byte of it)."""

    def __init__(self, code: str, message: str, status: int, **fields: Any):
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.status, self.fields = code, message, status, fields

    @classmethod
    def throttling(cls, message: str = "Rate exceeded") -> ServiceError:
        return cls("ThrottlingException", message, 400)

    @classmethod
    def model_not_ready(cls, message: str = "Model is not ready yet; try again later.") -> ServiceError:
        return cls("ModelNotReadyException", message, 429)

    @classmethod
    def service_unavailable(cls, message: str = "The service is unavailable. Try your call again.") -> ServiceError:
        return cls("ServiceUnavailable", message, 503)

    @classmethod
    def endpoint_not_found(cls, name: str) -> ServiceError:
        return cls("ValidationError", f"Endpoint {name} of account {ACCOUNT_ID} not found.", 400)

    @classmethod
    def model_error(cls, original_status: int, original_message: str) -> ServiceError:
        side = "server" if original_status >= 500 else "client"
        return cls(
            "ModelError",
            f"Received {side} error ({original_status}) from primary with message \"{original_message}\".",
            424,
            OriginalStatusCode=original_status,
            OriginalMessage=original_message,
            LogStreamArn=f"arn:aws:logs:us-east-1:{ACCOUNT_ID}:log-group:/aws/sagemaker/Endpoints/local",
        )


class StreamFault(Exception):
    """A failure after the stream started: sent as an exception message, which ends the stream."""

    def __init__(self, kind: str = "ModelStreamError", message: str = "", error_code: str | None = "StreamBroken"):
        if kind not in ("ModelStreamError", "InternalStreamFailure"):
            raise ValueError(f"kind must be ModelStreamError or InternalStreamFailure, got {kind!r}")
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message or (
            "The model's stream broke." if kind == "ModelStreamError" else "The stream processing failed."
        )
        self.error_code = error_code if kind == "ModelStreamError" else None


# --- backends --------------------------------------------------------------------------------------


class Backend(Protocol):
    async def open_stream(self, body: bytes) -> AsyncIterator[bytes]:
        """Check the request (raise `ServiceError`), then return the model's output as byte pieces."""
        ...

    async def invoke(self, body: bytes) -> tuple[bytes, str]:
        """The whole reply of a non-streaming call and its content type."""
        ...


@dataclass(frozen=True)
class Reply:
    """One scripted reply of the model behind an endpoint.

    lines: JSON lines the model writes (dicts are serialised at the moment they are sent).
    first_byte_delay: seconds before the first piece (a slow first token).
    interval: seconds between lines.
    part_size: re-cut the byte stream into PayloadParts of this many bytes, so lines straddle parts.
    error: answer with this API error instead of a stream.
    fault / fault_after: end the stream with this exception message after that many lines.
    stamp_field: put `time.monotonic_ns()` in this field of each dict line as it is sent (benchmarks).
    body: the reply of a non-streaming InvokeEndpoint call; by default the lines folded into a completion.
    """

    lines: Sequence[dict[str, Any] | str | bytes] = ()
    first_byte_delay: float = 0.0
    interval: float = 0.0
    part_size: int | None = None
    error: ServiceError | None = None
    fault: StreamFault | None = None
    fault_after: int = 0
    stamp_field: str | None = None
    body: dict[str, Any] | None = None


class Scripted:
    """Replays `Reply`s: one for every request, a sequence used in turn (the last repeats), or a function
    of the request body."""

    def __init__(self, replies: Reply | Sequence[Reply] | Callable[[dict[str, Any]], Reply]):
        if isinstance(replies, Reply):
            self._next: Callable[[dict[str, Any]], Reply] = lambda body: replies
        elif callable(replies):
            self._next = replies
        else:
            queue = list(replies)
            if not queue:
                raise ValueError("Scripted needs at least one Reply")
            turn = itertools.count()
            self._next = lambda body: queue[min(next(turn), len(queue) - 1)]

    async def open_stream(self, body: bytes) -> AsyncIterator[bytes]:
        reply = self._next(_json_body(body))
        if reply.error is not None:
            raise reply.error
        return self._play(reply)

    async def _play(self, reply: Reply) -> AsyncIterator[bytes]:
        if reply.first_byte_delay:
            await asyncio.sleep(reply.first_byte_delay)
        pending = b""
        for sent, line in enumerate(reply.lines):
            if reply.fault is not None and sent >= reply.fault_after:
                break
            if sent and reply.interval:
                await asyncio.sleep(reply.interval)
            data = _line_bytes(line, reply.stamp_field)
            if not reply.part_size:
                yield data
                continue
            pending += data
            while len(pending) >= reply.part_size:
                yield pending[: reply.part_size]
                pending = pending[reply.part_size :]
        if pending:
            yield pending
        if reply.fault is not None:
            raise reply.fault

    async def invoke(self, body: bytes) -> tuple[bytes, str]:
        reply = self._next(_json_body(body))
        if reply.error is not None:
            raise reply.error
        if reply.first_byte_delay:
            await asyncio.sleep(reply.first_byte_delay)
        folded = reply.body if reply.body is not None else fold_chunks([_line_dict(line) for line in reply.lines])
        return json.dumps(folded).encode(), "application/json"


def _json_body(body: bytes) -> dict[str, Any]:
    try:
        parsed = json.loads(body or b"{}")
    except ValueError:
        raise ServiceError.model_error(400, "request body is not JSON") from None
    if not isinstance(parsed, dict):
        raise ServiceError.model_error(400, "request body must be a JSON object")
    return parsed


def _line_bytes(line: dict[str, Any] | str | bytes, stamp_field: str | None) -> bytes:
    if isinstance(line, dict):
        if stamp_field:
            line = {**line, stamp_field: time.monotonic_ns()}
        return json.dumps(line, separators=(",", ":")).encode() + b"\n"
    data = line.encode() if isinstance(line, str) else line
    return data if data.endswith(b"\n") else data + b"\n"


def _line_dict(line: dict[str, Any] | str | bytes) -> dict[str, Any]:
    return line if isinstance(line, dict) else json.loads(line)


def chunk(
    content: str | None = None,
    *,
    role: str | None = None,
    finish_reason: str | None = None,
    completion_id: str = "chatcmpl-local",
    model: str = "local-model",
    created: int = 0,
) -> dict[str, Any]:
    """A `chat.completion.chunk` as LMI/vLLM writes it."""
    delta: dict[str, Any] = {}
    if role is not None:
        delta["role"] = role
    if content is not None:
        delta["content"] = content
    return {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }


def usage_chunk(prompt_tokens: int, completion_tokens: int, *, completion_id: str = "chatcmpl-local",
                model: str = "local-model", created: int = 0) -> dict[str, Any]:
    return {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def synthetic_reply(
    body: Mapping[str, Any],
    *,
    default_max_tokens: int = 16,
    model: str = "local-model",
    **timing: Any,
) -> Reply:
    """A fake engine's reply to a chat request: a role chunk, `max_tokens` one-token content chunks
    ("tok0 ", "tok1 ", ...), a finish_reason, and a usage chunk when `stream_options.include_usage`."""
    max_tokens = body.get("max_tokens") or body.get("max_completion_tokens") or default_max_tokens
    prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []) if isinstance(m, dict))
    completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
    created = int(time.time())
    ids = {"completion_id": completion_id, "model": model, "created": created}
    lines: list[dict[str, Any]] = [chunk("", role="assistant", **ids)]
    lines += [chunk(f"tok{i} ", **ids) for i in range(int(max_tokens))]
    lines.append(chunk(None, finish_reason="length", **ids))
    if (body.get("stream_options") or {}).get("include_usage"):
        lines.append(usage_chunk(prompt_tokens, int(max_tokens), **ids))
    stamp = timing.get("stamp_field")
    if stamp:  # benchmarks: when the request arrived, beside when each chunk is sent
        arrived = time.monotonic_ns()
        lines = [{**line, f"{stamp}_request": arrived} for line in lines]
    return Reply(lines=lines, **timing)


def fold_chunks(chunks: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The `chat.completion` a non-streaming call returns, folded from the stream's chunks."""
    first = chunks[0] if chunks else {}
    choices: dict[int, dict[str, Any]] = {}
    usage = None
    for piece in chunks:
        usage = piece.get("usage") or usage
        for choice in piece.get("choices") or []:
            slot = choices.setdefault(
                choice.get("index", 0),
                {"index": choice.get("index", 0), "message": {"role": "assistant", "content": ""},
                 "logprobs": None, "finish_reason": None},
            )
            delta = choice.get("delta") or {}
            slot["message"]["content"] += delta.get("content") or ""
            slot["finish_reason"] = choice.get("finish_reason") or slot["finish_reason"]
    return {
        "id": first.get("id", "chatcmpl-local"),
        "object": "chat.completion",
        "created": first.get("created", 0),
        "model": first.get("model", "local-model"),
        "choices": [choices[i] for i in sorted(choices)],
        "usage": usage,
    }


class Forward:
    """Relays each call to an OpenAI-compatible server at `base_url` (ending in /v1)."""

    def __init__(self, base_url: str, *, api_key: str | None = None, timeout: float = 600.0):
        self.base_url = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout = ClientTimeout(total=None, sock_connect=10, sock_read=timeout)
        self._session: ClientSession | None = None

    def _client(self) -> ClientSession:
        # Created on first use, inside the emulator's event loop; trust_env=False: no proxy/netrc look-ups.
        if self._session is None or self._session.closed:
            self._session = ClientSession(
                timeout=self._timeout, trust_env=False, connector=TCPConnector(keepalive_timeout=KEEPALIVE_S)
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def _post(self, body: bytes, path: str = "/chat/completions"):
        try:
            try:
                response = await self._send(body, path)
            except ClientError as err:
                # A pooled keep-alive connection the model server was closing (llama.cpp and uvicorn
                # close idle ones after 5 s): send once more on a new connection. Refusals are real.
                if not closed_under_us(err):
                    raise
                response = await self._send(body, path)
        except (ClientError, OSError) as err:
            raise ServiceError.service_unavailable(
                f"the model server at {self.base_url} does not answer ({type(err).__name__}: {err})"
            ) from None
        if response.status != 200:
            text = (await response.text())[:2000]
            response.release()
            self._refuse(response.status, text)
        return response

    @staticmethod
    def _refuse(status: int, text: str) -> None:
        if status == 503:
            raise ServiceError.model_not_ready(f"the model server is not ready: {text}")
        raise ServiceError.model_error(status, text)

    def _send(self, body: bytes, path: str):
        return self._client().post(
            f"{self.base_url}{path}", data=body, headers={**self._headers, "Content-Type": "application/json"}
        )

    async def open_stream(self, body: bytes) -> AsyncIterator[bytes]:
        request = _json_body(body)
        request["stream"] = True
        response = await self._post(json.dumps(request).encode())
        return self._relay(response)

    async def _relay(self, response) -> AsyncIterator[bytes]:
        try:
            async for raw in response.content:
                line = raw.strip()
                if not line.startswith(b"data:"):
                    continue  # SSE comments, event names, blank separators
                data = line[5:].strip()
                if data == b"[DONE]":
                    break
                yield data + b"\n"
        except (TimeoutError, ClientError, OSError) as err:
            # A cut mid-body (chunked encoding not finished) lands here, as SageMaker reports it.
            raise StreamFault("ModelStreamError", f"the model server's stream broke: {err}", "StreamBroken") from None
        finally:
            response.release()

    async def invoke(self, body: bytes) -> tuple[bytes, str]:
        request = _json_body(body)
        request.pop("stream_options", None)
        request["stream"] = False
        response = await self._post(json.dumps(request).encode())
        try:
            return await response.read(), response.headers.get("Content-Type", "application/json")
        finally:
            response.release()


class LmiVllm(Forward):
    """The model server of the LMI v15 image in front of a real vLLM server (see `local/lmi.py`).

    Request handling as `djl_python/lmi_vllm/vllm_async_service.py` (djl-serving 0.33.0-dlc) does it: a body
    without `model` gets the served name; `messages` goes to chat completions, `prompt` to completions;
    anything else is refused with 424 "Input parsing failed". Output as LMI writes it: a stream of JSON lines
    (`data: ` cut, `[DONE]` as a last empty line), whatever `stream` the caller asked for (no forcing), and an
    engine error as HTTP `code` with `{"code": N, "error": message}` (Request.java), which SageMaker hands
    the caller as ModelError with that OriginalStatusCode. The TGI schema (`inputs`) is not emulated: such a
    request is refused with 424 saying so, never answered with something LMI would not send.
    """

    def __init__(self, base_url: str, served_name: str, **kwargs: Any):
        super().__init__(base_url, **kwargs)
        self.served_name = served_name

    def _route(self, body: bytes) -> tuple[str, bytes]:
        try:
            payload = json.loads(body)
            if not isinstance(payload, dict):
                raise ValueError("the payload is not a JSON object")
        except ValueError as err:
            raise ServiceError.model_error(424, _lmi_error(424, f"Input parsing failed: {err}")) from None
        if "model" not in payload:
            payload["model"] = self.served_name
        if "prompt" in payload:
            path = "/completions"
        elif "inputs" in payload:
            raise ServiceError.model_error(424, _lmi_error(424, "Input parsing failed: the TGI schema is not emulated locally"))
        elif "messages" in payload:
            path = "/chat/completions"
        else:
            raise ServiceError.model_error(
                424, _lmi_error(424, "Input parsing failed: invalid payload. must contain prompt, inputs, or messages")
            )
        return path, json.dumps(payload).encode()

    @staticmethod
    def _refuse(status: int, text: str) -> None:
        raise ServiceError.model_error(status, _lmi_error(status, _engine_message(text)))

    async def _lmi_post(self, body: bytes):
        path, payload = self._route(body)
        return await self._post(payload, path)

    async def open_stream(self, body: bytes) -> AsyncIterator[bytes]:
        response = await self._lmi_post(body)
        if not response.headers.get("Content-Type", "").startswith("text/event-stream"):
            return self._whole(response)
        return self._lmi_relay(response)

    @staticmethod
    async def _whole(response) -> AsyncIterator[bytes]:
        try:
            yield (await response.read()).strip() + b"\n"
        finally:
            response.release()

    async def _lmi_relay(self, response) -> AsyncIterator[bytes]:
        async for line in self._relay(response):
            yield line
        yield b"\n"  # vllm_stream_output_formatter: [DONE] -> "" as the last chunk, plus the newline

    async def invoke(self, body: bytes) -> tuple[bytes, str]:
        response = await self._lmi_post(body)
        if response.headers.get("Content-Type", "").startswith("text/event-stream"):
            # `"stream": true` in an InvokeEndpoint body: LMI still writes JSON lines, joined by the frontend.
            return b"".join([line async for line in self._lmi_relay(response)]), "application/jsonlines"
        try:
            return (await response.read()).strip() + b"\n", "application/json"
        finally:
            response.release()


def _engine_message(text: str) -> str:
    """The message of a vLLM ErrorResponse: `{"error": {"message": ...}}` (0.9+) or `{"message": ...}` (0.8)."""
    try:
        parsed = json.loads(text)
    except ValueError:
        return text
    if isinstance(parsed, dict):
        inner = parsed.get("error") if isinstance(parsed.get("error"), dict) else parsed
        if isinstance(inner.get("message"), str):
            return inner["message"]
    return text


def _lmi_error(code: int, message: str) -> str:
    return json.dumps({"code": code, "error": message})


# --- the server ------------------------------------------------------------------------------------


@dataclass
class CallRecord:
    """What the emulator saw of one call (tests and benchmarks read these)."""

    endpoint: str
    operation: str
    body: bytes
    started: float = field(default_factory=time.monotonic)
    status: int = 0
    parts_sent: int = 0
    bytes_sent: int = 0
    completed: bool = False
    aborted: bool = False  # the caller went away before the stream ended
    ended: float | None = None

    @property
    def request(self) -> dict[str, Any]:
        return json.loads(self.body or b"{}")


class SageMakerRuntimeEmulator:
    """An HTTP server on `host:port` (0 picks a free port) answering the SageMaker runtime API.

    Runs its own event loop in a background thread: `start()`/`stop()` or use it as a context manager.
    """

    def __init__(self, endpoints: Mapping[str, Backend], *, host: str = "127.0.0.1", port: int = 0):
        self.endpoints = dict(endpoints)
        self.host, self.port = host, port
        self.calls: list[CallRecord] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._streaming: set[asyncio.Task] = set()

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def application(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/endpoints/{name}/invocations-response-stream", self._invoke_stream)
        app.router.add_post("/endpoints/{name}/invocations", self._invoke)
        app.router.add_get("/ping", self._ping)
        return app

    @staticmethod
    async def _ping(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    def client(self, region: str = "us-east-1", **config: Any):
        """A botocore `sagemaker-runtime` client pointed at this emulator, with dummy credentials."""
        import botocore.config
        import botocore.session

        session = botocore.session.get_session()
        return session.create_client(
            "sagemaker-runtime",
            region_name=region,
            endpoint_url=self.endpoint_url,
            aws_access_key_id="local",
            aws_secret_access_key="local",  # pragma: allowlist secret (dummy credential for the local endpoint)
            config=botocore.config.Config(retries={"total_max_attempts": 1}, **config),
        )

    # lifecycle

    def start(self, timeout: float = 10.0) -> SageMakerRuntimeEmulator:
        started = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._serve())
            except BaseException as err:  # reported to start()'s caller
                failure.append(err)
                started.set()
                return
            started.set()
            loop.run_forever()
            loop.run_until_complete(self._shutdown())
            loop.close()

        self._thread = threading.Thread(target=run, name="sagemaker-runtime-emulator", daemon=True)
        self._thread.start()
        if not started.wait(timeout):
            raise RuntimeError(f"the SageMaker runtime emulator did not start within {timeout} s")
        if failure:
            raise RuntimeError(f"the SageMaker runtime emulator could not listen on {self.host}:{self.port}: {failure[0]}")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        self._loop = self._thread = None

    def __enter__(self) -> SageMakerRuntimeEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _serve(self) -> None:
        self._runner = web.AppRunner(self.application(), access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # the port 0 picked

    async def _shutdown(self) -> None:
        # Streams still running (a client that never left, a long scripted delay) end now.
        for task in list(self._streaming):
            task.cancel()
        if self._streaming:
            await asyncio.gather(*self._streaming, return_exceptions=True)
        for backend in self.endpoints.values():
            close = getattr(backend, "close", None)
            if close is not None:
                await close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def serve_forever(self, on_ready: Callable[[], None] | None = None) -> None:
        """Serve in the current event loop until cancelled (the CLI)."""
        await self._serve()
        if on_ready is not None:
            on_ready()
        try:
            await asyncio.Event().wait()
        finally:
            await self._shutdown()

    # handlers

    def _backend(self, name: str) -> Backend:
        backend = self.endpoints.get(name)
        if backend is None:
            raise ServiceError.endpoint_not_found(name)
        return backend

    async def _invoke_stream(self, request: web.Request) -> web.StreamResponse:
        record = CallRecord(request.match_info["name"], "InvokeEndpointWithResponseStream", await request.read())
        self.calls.append(record)
        try:
            pieces = await self._backend(record.endpoint).open_stream(record.body)
        except ServiceError as err:
            return self._error(record, err)
        response = web.StreamResponse(
            status=200,
            headers={
                "Content-Type": EVENT_STREAM_CONTENT_TYPE,
                "X-Amzn-SageMaker-Content-Type": MODEL_CONTENT_TYPE,
                "x-Amzn-Invoked-Production-Variant": "AllTraffic",
                "x-amzn-RequestId": str(uuid.uuid4()),
            },
        )
        response.enable_chunked_encoding()
        record.status = 200
        task = asyncio.current_task()
        self._streaming.add(task)
        try:
            await response.prepare(request)
            try:
                async for piece in pieces:
                    await self._send(response, record, payload_part(piece))
            except (StreamFault, ServiceError) as fault:
                if isinstance(fault, ServiceError):
                    fault = StreamFault("InternalStreamFailure", fault.message)
                await self._send(response, record, stream_exception(fault.kind, fault.message, fault.error_code))
            await response.write_eof()
            record.completed = True
        except (ConnectionError, asyncio.CancelledError):
            record.aborted = True
            raise
        finally:
            self._streaming.discard(task)
            record.ended = time.monotonic()
            aclose = getattr(pieces, "aclose", None)
            if aclose is not None:
                await aclose()
        return response

    @staticmethod
    async def _send(response: web.StreamResponse, record: CallRecord, message: bytes) -> None:
        await response.write(message)
        record.parts_sent += 1
        record.bytes_sent += len(message)

    async def _invoke(self, request: web.Request) -> web.Response:
        record = CallRecord(request.match_info["name"], "InvokeEndpoint", await request.read())
        self.calls.append(record)
        try:
            body, content_type = await self._backend(record.endpoint).invoke(record.body)
        except ServiceError as err:
            return self._error(record, err)
        record.status, record.completed, record.ended = 200, True, time.monotonic()
        record.bytes_sent = len(body)
        return web.Response(
            body=body,
            headers={
                "Content-Type": content_type,
                "x-Amzn-Invoked-Production-Variant": "AllTraffic",
                "x-amzn-RequestId": str(uuid.uuid4()),
            },
        )

    @staticmethod
    def _error(record: CallRecord, err: ServiceError) -> web.Response:
        record.status, record.ended = err.status, time.monotonic()
        return web.Response(
            status=err.status,
            body=json.dumps({"message": err.message, **err.fields}).encode(),
            headers={
                "Content-Type": "application/json",
                "x-amzn-ErrorType": err.code,
                "x-amzn-RequestId": str(uuid.uuid4()),
            },
        )


# --- CLI -------------------------------------------------------------------------------------------


def _script_backend(path: str) -> Scripted:
    """A script file: {"lines": [...], "first_byte_delay": s, "interval": s, "part_size": n,
    "error": "ThrottlingException"|..., "fault": "ModelStreamError"|"InternalStreamFailure", "fault_after": n}."""
    with open(path) as handle:
        spec = json.load(handle)
    errors = {
        "ThrottlingException": ServiceError.throttling,
        "ModelNotReadyException": ServiceError.model_not_ready,
        "ServiceUnavailable": ServiceError.service_unavailable,
    }
    error = spec.pop("error", None)
    if error is not None and error not in errors:
        raise SystemExit(f"{path}: error must be one of {', '.join(errors)}, got {error!r}")
    fault = spec.pop("fault", None)
    return Scripted(
        Reply(
            error=errors[error]() if error else None,
            fault=StreamFault(fault) if fault else None,
            **spec,
        )
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m local.sagemaker_runtime",
        description="A local SageMaker runtime (event-stream wire format) in front of an OpenAI-compatible "
        "server, a script, or a synthetic model. Point boto3 at it with endpoint_url and any credentials.",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--forward", metavar="BASE_URL", help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8080/v1")
    source.add_argument("--script", metavar="FILE", help="JSON file with one scripted reply (see _script_backend)")
    parser.add_argument("--forward-api-key", default=None, help="bearer key the forwarded server wants")
    parser.add_argument("--lmi-served-name", metavar="NAME", default=None,
                        help="with --forward: behave as LMI's model server (LmiVllm) for a vLLM serving NAME")
    parser.add_argument("--endpoint-name", action="append", default=None,
                        help="endpoint name(s) to answer (repeatable; default: llm); others get ValidationError")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--interval", type=float, default=0.01, help="synthetic model: seconds between tokens")
    parser.add_argument("--first-token-delay", type=float, default=0.05, help="synthetic model: seconds to first token")
    parser.add_argument("--stamp-field", default=None,
                        help="synthetic model: put time.monotonic_ns() at sending in this field of every chunk")
    args = parser.parse_args(argv)

    if args.forward and args.lmi_served_name:
        backend: Backend = LmiVllm(args.forward, args.lmi_served_name, api_key=args.forward_api_key)
        what = f"LMI's model server over vLLM at {args.forward} (serving {args.lmi_served_name})"
    elif args.forward:
        backend = Forward(args.forward, api_key=args.forward_api_key)
        what = f"forwarding to {args.forward}"
    elif args.script:
        backend, what = _script_backend(args.script), f"replaying {args.script}"
    else:
        backend = Scripted(lambda body: synthetic_reply(body, first_byte_delay=args.first_token_delay,
                                                        interval=args.interval, stamp_field=args.stamp_field))
        what = "synthetic model"
    names = args.endpoint_name or ["llm"]
    emulator = SageMakerRuntimeEmulator({name: backend for name in names}, host=args.host, port=args.port)

    def ready() -> None:
        print(f"SageMaker runtime emulator on {emulator.endpoint_url} ({what}); endpoints: {', '.join(names)}",
              flush=True)

    try:
        asyncio.run(emulator.serve_forever(ready))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
