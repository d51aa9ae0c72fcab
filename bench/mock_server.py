"""A mock OpenAI chat-completions server with scripted timings and fault modes.

For tests and for users checking their client machine (`python -m bench mock-server`), and the ground
truth of benchmarks/client_accuracy.py. Timing: the role-only chunk goes out with the headers, content
chunk j is due at TTFT + j * ITL after the request arrived (an absolute schedule, so delays don't add
up), each carrying `--tokens-per-chunk` tokens; then the usage chunk (when asked for), the gateway's
`: metrics {...}` comment and `data: [DONE]`. asyncio timers fire up to ~1 ms late, so the server also
*measures* when it wrote each chunk and reports that truth in the metrics comment (`ttft_ms`,
`mock_itl_ms`): clients are judged against what was sent, not what was planned. "The request arrived"
is the socket read that brought it (not when aiohttp got round to the handler), so the server's truth
and the bench's measurement are both taken at the sockets.

Faults (`--fault KIND:FRACTION`, chosen deterministically: exactly that fraction of requests, evenly
spread; or per request with the header `X-Mock-Fault: KIND`):
  http_401 http_404 http_429 http_500 http_503  error status with a JSON error body
  disconnect     close the connection before answering (and again if the same request is resent)
  stream_cut     close the connection halfway through the stream
  truncated      end the stream cleanly halfway, without finish_reason or [DONE]
  malformed_sse  a line that is not JSON halfway through
  stream_error   an in-band `data: {"error": {...}}` halfway, then the stream ends (the gateway's contract)
  stall          stop sending halfway and hang
  buffered       SSE, but everything written at once at the end (a buffering gateway)
  not_streaming  one JSON chat.completion with X-TTFT-MS headers (a non-streaming gateway)
  empty          a stream with no content

Capacity (bench/mock_capacity.py; `--max-concurrent`, `--capacity-schedule`, `--autoscale`): N slots serve
at once and the rest wait in a queue (their TTFT includes the wait), the slots changing on a schedule or
as a scripted autoscaler would; `GET /capacity` tells slots, queue and every change, `GET /metrics` has
vLLM's gauges (`vllm:num_requests_running`, `vllm:num_requests_waiting`, token counters).
"""

from __future__ import annotations

import asyncio
import collections
import random
import threading
import time
from dataclasses import dataclass, field
from time import perf_counter_ns

import orjson
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from bench.mock_capacity import Autoscale, Capacity, check_capacity_config, prometheus_text

FAULTS = (
    "http_401",
    "http_404",
    "http_429",
    "http_500",
    "http_503",
    "disconnect",
    "stream_cut",
    "truncated",
    "malformed_sse",
    "stream_error",
    "stall",
    "buffered",
    "not_streaming",
    "empty",
)
DEFAULT_OUTPUT_TOKENS = 16


@dataclass
class MockConfig:
    ttft_ms: float = 50.0
    itl_ms: float = 10.0
    ttft_jitter_ms: float = 0.0  # stdev of a normal jitter, clipped at 0
    itl_jitter_ms: float = 0.0
    output_tokens: int | None = None  # None: the request's max_tokens
    tokens_per_chunk: int = 1
    role_chunk: bool = True
    usage: bool = True  # send usage when the request asks for it
    metrics_comment: bool = True
    faults: dict = field(default_factory=dict)  # kind -> fraction of requests
    api_key: str | None = None
    model: str = "mock-model"
    seed: int = 0
    # Seconds an idle keep-alive connection stays open (uvicorn, under vLLM, closes after 5).
    keepalive_s: float = 75.0
    # Capacity (bench/mock_capacity.py): slots serving at once (None: no limit), the rest queue.
    max_concurrent: int | None = None
    capacity_schedule: tuple = ()  # ((seconds after start, slots), ...)
    autoscale: Autoscale | None = None
    slots_per_instance: int | None = None  # for instance counts (default: max_concurrent, one instance)
    max_queue: int | None = None  # more waiting than this get a 503 (None: the queue is unbounded)

    def __post_init__(self):
        for kind, fraction in self.faults.items():
            if kind not in FAULTS:
                raise ValueError(f"unknown fault {kind!r}; known: {', '.join(FAULTS)}")
            if not 0 <= fraction <= 1:
                raise ValueError(f"fault {kind}: fraction {fraction} must be within 0..1")
        if sum(self.faults.values()) > 1:
            raise ValueError("fault fractions add up to more than 1")
        if self.tokens_per_chunk < 1:
            raise ValueError("tokens_per_chunk must be >= 1")
        if self.keepalive_s <= 0:
            raise ValueError("keepalive_s must be > 0 seconds")
        check_capacity_config(self.max_concurrent, self.capacity_schedule, self.autoscale,
                              self.slots_per_instance, self.max_queue)


def _sse(obj) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


class _State:
    def __init__(self, cfg: MockConfig):
        self.cfg = cfg
        self.count = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.by_fault: collections.Counter = collections.Counter()
        self.dropped: dict[bytes, None] = {}  # bodies of `disconnect`ed requests (insertion-ordered set)
        self.resent = 0  # requests sent again after a `disconnect`, dropped again
        self.arrivals_ns: collections.deque = collections.deque(maxlen=100_000)
        self.rng = random.Random(cfg.seed)
        self._fault_table = [(kind, fraction) for kind, fraction in cfg.faults.items() if fraction > 0]
        self._fault_total = sum(fraction for _kind, fraction in self._fault_table)
        self._faulted = 0
        self._served: collections.Counter = collections.Counter()
        self.capacity = (Capacity(cfg.max_concurrent, cfg.capacity_schedule, cfg.autoscale,
                                  cfg.slots_per_instance, cfg.max_queue)
                         if cfg.max_concurrent is not None else None)
        self.generation_tokens = 0  # for /metrics
        self.prompt_tokens = 0
        self.successes = 0

    def pick_fault(self, index: int) -> str | None:
        # Request i is faulted when floor((i+1)*F) > floor(i*F), F the fractions' sum: exactly floor(n*F)
        # of the first n requests, spread evenly (1e-9 absorbs float error in F, e.g. 0.1+0.2+0.4). The j-th
        # faulted request goes to the kind furthest behind its share (j+1)*f/F (ties: the order given), so
        # every kind gets exactly n*f of the first n requests whenever that is whole. Reproducible.
        total = self._fault_total
        if not total or int((index + 1) * total + 1e-9) <= int(index * total + 1e-9):
            return None
        j = self._faulted
        self._faulted += 1
        kind = max(self._fault_table, key=lambda kf: (j + 1) * kf[1] / total - self._served[kf[0]])[0]
        self._served[kind] += 1
        return kind


STATE = web.AppKey("state", _State)


def build_app(cfg: MockConfig) -> web.Application:
    state = _State(cfg)
    app = web.Application()
    app[STATE] = state

    async def models(_request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": cfg.model, "object": "model"}]})

    async def health(_request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def stats(_request: web.Request) -> web.Response:
        return web.json_response(
            {
                "requests": state.count,
                "max_in_flight": state.max_in_flight,
                "faults": dict(state.by_fault),
                "resent": state.resent,
                "arrivals_ns": list(state.arrivals_ns),
            }
        )

    async def capacity(_request: web.Request) -> web.Response:
        if state.capacity is None:
            return web.json_response({"slots": None, "running": state.in_flight, "waiting": 0, "events": []})
        return web.json_response(state.capacity.snapshot())

    async def metrics(_request: web.Request) -> web.Response:
        cap = state.capacity
        text = prometheus_text(cfg.model, cap.running if cap else state.in_flight, cap.waiting if cap else 0,
                               state.generation_tokens, state.prompt_tokens, state.successes, cap)
        return web.Response(text=text, content_type="text/plain", charset="utf-8")

    async def chat(request: web.Request) -> web.StreamResponse:
        state.in_flight += 1
        state.max_in_flight = max(state.max_in_flight, state.in_flight)
        try:
            return await _chat(request)
        finally:
            state.in_flight -= 1

    async def _chat(request: web.Request) -> web.StreamResponse:
        # The request's arrival as the socket read saw it (see _ArrivalStamping): the server's own
        # event-loop lag before this handler runs is part of the TTFT it reports, as on a real server.
        t_recv = getattr(request.protocol, "arrival_ns", 0) or perf_counter_ns()
        body = await request.read()
        if body in state.dropped:
            # A client sending a dropped request again (a keep-alive retry) is dropped again: this
            # server loses that request for good, and the fault schedule of new requests is unchanged.
            state.resent += 1
            request.transport.close()
            raise asyncio.CancelledError
        index = state.count
        state.count += 1
        state.arrivals_ns.append(t_recv)
        fault = request.headers.get("X-Mock-Fault") or state.pick_fault(index)
        if fault == "none":
            fault = None
        if fault:
            state.by_fault[fault] += 1
        if cfg.api_key is not None:
            auth = request.headers.get("Authorization", "")
            if auth != f"Bearer {cfg.api_key}" and request.headers.get("x-api-key") != cfg.api_key:
                fault = "http_401"
        if fault and fault.startswith("http_"):
            status = int(fault[5:])
            headers = {"Retry-After": "1"} if status == 429 else None
            return web.json_response(
                {"error": {"message": f"mock {fault}", "type": "mock_error", "code": status}},
                status=status,
                headers=headers,
            )
        if fault == "disconnect":
            state.dropped[body] = None
            if len(state.dropped) > 10_000:
                del state.dropped[next(iter(state.dropped))]
            request.transport.close()
            raise asyncio.CancelledError
        try:
            payload = orjson.loads(body)
            assert isinstance(payload, dict)
        except (orjson.JSONDecodeError, AssertionError):
            return web.json_response({"error": {"message": "body is not a JSON object"}}, status=400)
        n = cfg.output_tokens or payload.get("max_tokens") or payload.get("max_completion_tokens")
        n = int(n or DEFAULT_OUTPUT_TOKENS)
        k = cfg.tokens_per_chunk
        chunks = [min(k, n - i) for i in range(0, n, k)]
        rng = state.rng
        ttft_ns = max(0.0, rng.gauss(cfg.ttft_ms, cfg.ttft_jitter_ms) if cfg.ttft_jitter_ms else cfg.ttft_ms) * 1e6
        gaps_ns = [
            max(0.0, rng.gauss(cfg.itl_ms, cfg.itl_jitter_ms) if cfg.itl_jitter_ms else cfg.itl_ms) * 1e6
            for _ in chunks[1:]
        ]
        want_usage = cfg.usage and bool((payload.get("stream_options") or {}).get("include_usage"))
        streamed = fault != "not_streaming" and bool(payload.get("stream"))
        cap = state.capacity
        if cap is None:
            return await _serve(request, streamed, fault, t_recv, t_recv, ttft_ns, gaps_ns, chunks, want_usage, index)
        if cap.full():
            cap.rejected += 1
            return web.json_response(
                {"error": {"message": f"mock queue full ({cap.waiting} waiting, {cap.slots} slots)",
                           "type": "mock_error", "code": 503}}, status=503)
        # Served once a slot is free: the reply's timing starts then, its reported TTFT at arrival.
        t_start = perf_counter_ns() if await cap.acquire() else t_recv
        try:
            return await _serve(request, streamed, fault, t_recv, t_start, ttft_ns, gaps_ns, chunks, want_usage, index)
        finally:
            cap.release()

    async def _serve(request, streamed, fault, t_recv, t_start, ttft_ns, gaps_ns, chunks, want_usage, index):
        state.prompt_tokens += 8
        if not streamed:
            return await _not_streaming(request, state, t_recv, t_start, ttft_ns, gaps_ns, sum(chunks))
        return await _stream(request, state, fault, t_recv, t_start, ttft_ns, gaps_ns, chunks, want_usage, index)

    async def on_startup(_app: web.Application) -> None:
        if state.capacity is not None:
            state.capacity.start()

    async def on_cleanup(_app: web.Application) -> None:
        if state.capacity is not None:
            await state.capacity.stop()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)

    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/models", models)
    app.router.add_get("/health", health)
    app.router.add_get("/mock/stats", stats)
    app.router.add_get("/capacity", capacity)
    app.router.add_get("/metrics", metrics)
    return app


async def _sleep_until(t_ns: float) -> None:
    delay = (t_ns - perf_counter_ns()) / 1e9
    if delay > 0:
        await asyncio.sleep(delay)


async def _not_streaming(request, state: _State, t_recv, t_start, ttft_ns, gaps_ns, n) -> web.Response:
    cfg = state.cfg
    await _sleep_until(t_start + ttft_ns + sum(gaps_ns))
    state.generation_tokens += n
    state.successes += 1
    elapsed_ms = (perf_counter_ns() - t_recv) / 1e6
    body = {
        "id": "chatcmpl-mock",
        "object": "chat.completion",
        "model": cfg.model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "tok " * n}, "finish_reason": "length"}],
        "usage": {"prompt_tokens": 8, "completion_tokens": n, "total_tokens": n + 8},
    }
    headers = {"X-TTFT-MS": f"{elapsed_ms:.3f}", "X-Tokens-Per-Second": f"{n / (elapsed_ms / 1000):.3f}"}
    return web.json_response(body, headers=headers)


async def _stream(request, state: _State, fault, t_recv, t_start, ttft_ns, gaps_ns, chunks, want_usage, index):
    cfg = state.cfg
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await resp.prepare(request)
    base = {"id": f"chatcmpl-mock-{index}", "object": "chat.completion.chunk", "model": cfg.model}
    held: list[bytes] = []  # "buffered": everything goes out at the end

    async def send(data: bytes) -> int:
        if fault == "buffered":
            held.append(data)
        else:
            await resp.write(data)
        return perf_counter_ns()

    if cfg.role_chunk:
        await send(_sse({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}))
    half = len(chunks) // 2
    written: list[int] = []
    due = t_start + ttft_ns
    for j, size in enumerate(chunks):
        if j == half and fault in ("stream_cut", "truncated", "malformed_sse", "stream_error", "stall"):
            if fault == "stream_cut":
                request.transport.close()
                raise asyncio.CancelledError
            if fault == "malformed_sse":
                await send(b"data: {not json\n\n")
            elif fault == "stream_error":
                await send(_sse({"error": {"message": "mock failure mid-stream", "type": "mock_error", "code": 500}}))
            elif fault == "stall":
                await asyncio.sleep(3600)
            await resp.write_eof()
            return resp
        if j:
            due += gaps_ns[j - 1]
        await _sleep_until(due)
        if fault == "empty":
            continue
        text = "tok " * size
        state.generation_tokens += size
        written.append(await send(_sse({**base, "choices": [{"index": 0, "delta": {"content": text}}]})))
    await send(_sse({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]}))
    n = sum(chunks) if fault != "empty" else 0
    state.successes += 1
    if want_usage:
        await send(_sse({**base, "choices": [], "usage": {"prompt_tokens": 8, "completion_tokens": n, "total_tokens": n + 8}}))
    if cfg.metrics_comment and written:
        span_s = (written[-1] - written[0]) / 1e9
        metrics = {
            "ttft_ms": round((written[0] - t_recv) / 1e6, 4),
            "tokens_per_second": round((n - chunks[0]) / span_s, 3) if span_s > 0 else None,
            "completion_tokens": n,
            "mock_itl_ms": [round((b - a) / 1e6, 4) for a, b in zip(written, written[1:], strict=False)],
        }
        await send(b": metrics " + orjson.dumps(metrics) + b"\n\n")
    await send(b"data: [DONE]\n\n")
    if held:
        await resp.write(b"".join(held))
    await resp.write_eof()
    return resp


class _StampingHandler(RequestHandler):
    """aiohttp's server protocol, with the time of the connection's last socket read.

    aiohttp runs a handler only after it parsed the request, when the loop gets to it; the stamp taken
    in `data_received` is when the request reached this server, the start of the TTFT it reports.
    """

    __slots__ = ("arrival_ns",)

    def data_received(self, data: bytes) -> None:
        self.arrival_ns = perf_counter_ns()
        super().data_received(data)


class _ArrivalStamping:
    """The web server's protocol factory, making `_StampingHandler`s (what `web.Server()` does)."""

    def __init__(self, server: web.Server):
        self._server = server

    def __call__(self) -> _StampingHandler:
        return _StampingHandler(self._server, loop=self._server._loop, **self._server._kwargs)

    def __getattr__(self, name: str):
        return getattr(self._server, name)


async def _setup(runner: web.AppRunner) -> None:
    await runner.setup()
    runner._server = _ArrivalStamping(runner._server)


class MockServer:
    """Run the mock in a background thread: `with MockServer(MockConfig()) as url: ...` (url ends in /v1)."""

    def __init__(self, cfg: MockConfig | None = None, host: str = "127.0.0.1", port: int = 0):
        self.cfg = cfg or MockConfig()
        self.host = host
        self.port = port
        self.app = build_app(self.cfg)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    @property
    def state(self) -> _State:
        return self.app[STATE]

    def start(self) -> str:
        ready = threading.Event()
        errors: list[BaseException] = []

        def main() -> None:
            self._loop = asyncio.new_event_loop()
            try:
                self._loop.run_until_complete(self._start())
            except BaseException as exc:  # reported to start()'s caller
                errors.append(exc)
                ready.set()
                return
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=main, name="mock-server", daemon=True)
        self._thread.start()
        ready.wait(30)
        if errors:
            raise errors[0]
        return self.url

    async def _start(self) -> None:
        self._runner = web.AppRunner(
            self.app, access_log=None, handler_cancellation=True, keepalive_timeout=self.cfg.keepalive_s
        )
        await _setup(self._runner)
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]

    def stop(self) -> None:
        if self._loop is None:
            return
        fut = asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop)
        try:
            fut.result(10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _parse_faults(specs: list[str]) -> dict:
    faults = {}
    for spec in specs:
        kind, _, fraction = spec.partition(":")
        try:
            faults[kind] = float(fraction) if fraction else 1.0
        except ValueError:
            raise ValueError(f"--fault {spec!r}: expected KIND[:FRACTION], e.g. stream_cut:0.05") from None
    return faults


def _serve_forever(cfg: MockConfig, host: str, port: int, reuse_port: bool, loop: str) -> None:
    async def serve() -> None:
        runner = web.AppRunner(build_app(cfg), access_log=None, handler_cancellation=True,
                               keepalive_timeout=cfg.keepalive_s)
        await _setup(runner)
        await web.TCPSite(runner, host, port, reuse_port=reuse_port or None).start()
        while True:
            await asyncio.sleep(3600)

    factory = None
    if loop != "asyncio":
        try:
            import uvloop

            factory = uvloop.new_event_loop
        except ImportError:
            pass
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(serve())
    except KeyboardInterrupt:
        pass


def main(argv: list[str]) -> int:
    from bench.cli_base import ArgParser

    p = ArgParser(prog="python -m bench mock-server", description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--ttft-ms", type=float, default=50.0, help="time to first content chunk (default 50)")
    p.add_argument("--itl-ms", type=float, default=10.0, help="gap between content chunks (default 10)")
    p.add_argument("--ttft-jitter-ms", type=float, default=0.0, help="stdev of normal TTFT jitter")
    p.add_argument("--itl-jitter-ms", type=float, default=0.0, help="stdev of normal ITL jitter")
    p.add_argument("--output-tokens", type=int, help="tokens per reply (default: the request's max_tokens)")
    p.add_argument("--tokens-per-chunk", type=int, default=1)
    p.add_argument("--no-role-chunk", action="store_true", help="do not send the role-only first chunk")
    p.add_argument("--no-usage", action="store_true", help="never send the usage chunk")
    p.add_argument("--no-metrics", action="store_true", help="do not send the `: metrics` comment")
    p.add_argument("--fault", action="append", default=[], metavar="KIND[:FRACTION]", help=", ".join(FAULTS))
    p.add_argument("--api-key", help="require this key (Bearer or x-api-key)")
    p.add_argument("--model", default="mock-model")
    p.add_argument("--processes", type=int, default=1, help="serve from N processes (SO_REUSEPORT)")
    p.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keepalive-s", type=float, default=75.0,
                   help="close idle keep-alive connections after this many seconds (uvicorn: 5)")
    p.add_argument("--max-concurrent", type=int, help="slots serving at once; the rest wait in a queue")
    p.add_argument("--capacity-schedule", metavar="T:SLOTS,...", help="slots at T seconds after start, e.g. 0:4,30:8")
    p.add_argument("--autoscale", metavar="max=N,...",
                   help="scripted autoscaler: max=SLOTS[,queue=N][,sustain=S][,provision=S][,step=N]"
                        "[,cooldown=S][,scale_in=S]")
    p.add_argument("--slots-per-instance", type=int, help="slots per instance for /capacity's instance counts")
    p.add_argument("--max-queue", type=int, help="reply 503 when this many already wait")
    args = p.parse_args(argv)
    try:
        from bench.mock_capacity import parse_autoscale, parse_schedule

        schedule = parse_schedule(args.capacity_schedule) if args.capacity_schedule else ()
        autoscale = parse_autoscale(args.autoscale) if args.autoscale else None
        cfg = MockConfig(
            ttft_ms=args.ttft_ms,
            itl_ms=args.itl_ms,
            ttft_jitter_ms=args.ttft_jitter_ms,
            itl_jitter_ms=args.itl_jitter_ms,
            output_tokens=args.output_tokens,
            tokens_per_chunk=args.tokens_per_chunk,
            role_chunk=not args.no_role_chunk,
            usage=not args.no_usage,
            metrics_comment=not args.no_metrics,
            faults=_parse_faults(args.fault),
            api_key=args.api_key,
            model=args.model,
            seed=args.seed,
            keepalive_s=args.keepalive_s,
            max_concurrent=args.max_concurrent,
            capacity_schedule=schedule,
            autoscale=autoscale,
            slots_per_instance=args.slots_per_instance,
            max_queue=args.max_queue,
        )
    except ValueError as exc:
        p.error(str(exc))
    if args.processes < 1:
        p.error("--processes must be >= 1")
    print(
        f"mock OpenAI server on http://{args.host}:{args.port}/v1 (TTFT {cfg.ttft_ms:g} ms, ITL {cfg.itl_ms:g} ms, "
        f"{args.processes} process(es)); Ctrl-C stops it",
        flush=True,
    )
    if args.processes == 1:
        _serve_forever(cfg, args.host, args.port, False, args.loop)
        return 0
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_serve_forever, args=(cfg, args.host, args.port, True, args.loop), daemon=True)
        for _ in range(args.processes)
    ]
    for proc in procs:
        proc.start()
    from bench.cli_base import interruptible

    # SIGTERM (kill, a supervisor) stops the servers as Ctrl-C does, rather than orphaning them on the port.
    try:
        with interruptible():
            while all(proc.is_alive() for proc in procs):
                time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    for proc in procs:
        proc.terminate()
    return 0
