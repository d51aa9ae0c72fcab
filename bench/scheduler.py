"""Issue requests for one load level inside one worker's event loop.

closed loop: `concurrency` slots, each sends its next request when the previous one ends.
open loop:   arrivals at `rate` req/s (Poisson: exponential gaps; or constant), at most `concurrency` in
             flight; an arrival that finds the cap full waits, and that wait shows as client lag.
Both stop after `requests` measured requests or `duration_s`, whichever comes first. The first `warmup`
requests are sent and recorded with `"warmup": true`, and never enter the statistics. In closed loop the
warmup drains before measuring starts, so every measured request runs on warm connections.

Every record carries `scheduled_s` (when it should have been sent), `start_s` (when it was) and
`client_lag_ms` (the difference: the client's own scheduling delay), relative to the level's start time,
which all workers share (perf_counter is the system-wide monotonic clock).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass
from time import perf_counter_ns

import orjson

from bench.backend import Backend
from bench.measure import measure
from bench.prompts import Prompt
from bench.workloads import Session, reply_text


@dataclass(frozen=True)
class LevelSpec:
    """One worker's share of a level (the runner splits a level over the workers)."""

    level: int
    mode: str  # "closed" | "rate"
    concurrency: int  # slots (closed) or in-flight cap (rate)
    rate: float | None
    arrival: str  # "poisson" | "constant"
    requests: int | None  # measured requests for this worker; None = bounded by duration only
    warmup: int
    duration_s: float | None
    start_at_ns: int
    seed: int
    phase: float = 0.0  # constant arrivals: this worker's offset, as a fraction of its gap
    profile: dict | None = None  # --profile (bench.profiles): this worker's share, Profile.public() form


@dataclass(frozen=True)
class RequestOptions:
    model: str
    include_usage: bool = True
    extra_body: dict | None = None
    allow_buffered: bool = False


def arrival_gaps_ns(rate: float, arrival: str, rng: random.Random):
    """Endless gaps between arrivals, in ns."""
    mean_ns = 1e9 / rate
    if arrival == "constant":
        while True:
            yield mean_ns
    while True:
        yield rng.expovariate(1.0) * mean_ns


async def _sleep_until(t_ns: int) -> None:
    """Sleep until perf_counter_ns() >= t_ns. uvloop's timers have millisecond resolution and can fire up
    to ~1 ms early, which would send open-loop arrivals before their time (negative client lag)."""
    while (delay := t_ns - perf_counter_ns()) > 0:
        await asyncio.sleep(delay / 1e9)


class LevelRunner:
    def __init__(
        self,
        backend: Backend,
        prompts,
        spec: LevelSpec,
        options: RequestOptions,
        emit: Callable[[dict], None],
        worker: int,
        workers: int,
    ):
        self.backend = backend
        self.prompts = prompts
        self.spec = spec
        self.options = options
        self.emit = emit
        self.worker = worker
        self.workers = workers
        self.sent = 0
        self._seq = 0
        self._stopped = False
        self._tasks: set[asyncio.Task] = set()

    def stop(self) -> None:
        """Stop sending; cancel requests in flight (they are not recorded)."""
        self._stopped = True
        for task in list(self._tasks):
            task.cancel()

    def _body(self, prompt) -> bytes:
        body = {
            "model": self.options.model,
            "messages": prompt.messages,
            "max_tokens": prompt.max_tokens,
            "stream": True,
        }
        if self.options.include_usage:
            body["stream_options"] = {"include_usage": True}
        if self.options.extra_body:
            body.update(self.options.extra_body)
        return orjson.dumps(body)

    async def _one(self, scheduled_ns: int, warmup: bool) -> None:
        seq = self._seq
        self._seq += 1
        prompt = self.prompts.get(seq)
        if isinstance(prompt, Session):
            await self._session(prompt, seq * self.workers + self.worker, scheduled_ns, warmup)
        else:
            await self._send(prompt, seq * self.workers + self.worker, scheduled_ns, warmup)

    async def _session(self, session: Session, number: int, scheduled_ns: int, warmup: bool) -> None:
        """Turn t sends the history (the replies streamed back included) plus a new user message, after the
        think time; a failed turn ends the session."""
        history = list(session.system)
        turns = len(session.turns)
        for t, turn in enumerate(session.turns):
            if t:
                if session.think_time_s:  # not asyncio.sleep: uvloop's timers can fire a millisecond early
                    await _sleep_until(perf_counter_ns() + int(session.think_time_s * 1e9))
                if self._stopped:
                    return
                scheduled_ns = perf_counter_ns()
            history.append({"role": "user", "content": turn.content})
            prompt = Prompt(list(history), turn.prompt_tokens_target, turn.max_tokens)
            extra = {"session": number, "turn": t + 1}
            if session.group is not None:
                extra["prefix_group"] = session.group
            rec, reply = await self._send(prompt, number * turns + t, scheduled_ns, warmup, extra)
            if not rec.get("ok"):
                return
            history.append({"role": "assistant", "content": reply_text(reply.body)})

    async def _send(self, prompt, record_id: int, scheduled_ns: int, warmup: bool, extra: dict | None = None):
        body = self._body(prompt)
        self.sent += 1
        reply = await self.backend.send(body)
        t0 = self.spec.start_at_ns
        rec = {
            "id": record_id,
            "level": self.spec.level,
            "worker": self.worker,
            "warmup": warmup,
            "scheduled_s": round((scheduled_ns - t0) / 1e9, 6),
            "start_s": round((reply.t_start_ns - t0) / 1e9, 6),
            "end_s": round((reply.t_end_ns - t0) / 1e9, 6),
            "client_lag_ms": round((reply.t_start_ns - scheduled_ns) / 1e6, 4),
            "prompt_tokens_target": prompt.prompt_tokens_target,
            "max_tokens": prompt.max_tokens,
        }
        if extra:
            rec.update(extra)
        rec.update(measure(reply, allow_buffered=self.options.allow_buffered))
        self.emit(rec)
        return rec, reply

    async def _tracked(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        try:
            await task
        except asyncio.CancelledError:
            if not self._stopped:
                raise
        finally:
            self._tasks.discard(task)

    async def run(self) -> None:
        await _sleep_until(self.spec.start_at_ns)
        if self.spec.profile is not None:
            from bench.profiles import from_public

            profile = from_public(self.spec.profile)
            await (self._closed_profile(profile) if profile.closed_loop else self._open_profile(profile))
        elif self.spec.mode == "closed":
            if self.spec.warmup:
                await self._closed_phase(self.spec.warmup, None, warmup=True)
            await self._closed_phase(self.spec.requests, self.spec.duration_s, warmup=False)
        else:
            await self._open_loop()

    async def _closed_phase(self, count: int | None, duration_s: float | None, warmup: bool) -> None:
        started = perf_counter_ns()
        deadline = started + int(duration_s * 1e9) if duration_s else None
        issued = 0

        async def slot() -> None:
            nonlocal issued
            while not self._stopped:
                if count is not None and issued >= count:
                    return
                now = perf_counter_ns()
                if deadline is not None and now >= deadline:
                    return
                issued += 1
                await self._tracked(self._one(now, warmup))

        slots = min(self.spec.concurrency, count) if count is not None else self.spec.concurrency
        await asyncio.gather(*(slot() for _ in range(slots)))

    async def _open_loop(self) -> None:
        spec = self.spec
        rng = random.Random(f"{spec.seed}:{spec.level}:{self.worker}")
        gaps = arrival_gaps_ns(spec.rate, spec.arrival, rng)
        cap = asyncio.Semaphore(spec.concurrency)
        total = None if spec.requests is None else spec.warmup + spec.requests
        scheduled = spec.start_at_ns + int(spec.phase * 1e9 / spec.rate)
        measure_from = None
        k = 0
        running: set[asyncio.Task] = set()
        while not self._stopped:
            if total is not None and k >= total:
                break
            if spec.duration_s and measure_from is not None and scheduled - measure_from >= spec.duration_s * 1e9:
                break
            await _sleep_until(scheduled)
            await cap.acquire()
            if self._stopped:
                break
            warmup = k < spec.warmup
            if not warmup and measure_from is None:
                measure_from = scheduled
            task = asyncio.ensure_future(self._tracked(self._one(scheduled, warmup)))
            running.add(task)
            task.add_done_callback(lambda t: (running.discard(t), cap.release()))
            k += 1
            scheduled += int(next(gaps))
        if running:
            await asyncio.gather(*running, return_exceptions=True)

    async def _closed_profile(self, profile) -> None:
        """cstep: slot i sends while the profile's C is above i, and waits for a step that wants it again."""
        start = self.spec.start_at_ns
        end = start + int(profile.duration_s * 1e9)

        async def slot(i: int) -> None:
            while not self._stopped:
                now = perf_counter_ns()
                if now >= end:
                    return
                t_s = (now - start) / 1e9
                if profile.load_at(t_s) <= i:
                    nxt = next((seg.start_s for seg in profile.segments if seg.start_s > t_s and seg.begin > i), None)
                    if nxt is None:
                        return
                    await _sleep_until(start + int(nxt * 1e9))
                    continue
                await self._tracked(self._one(now, False))

        await asyncio.gather(*(slot(i) for i in range(int(profile.peak))))

    async def _open_profile(self, profile) -> None:
        """step/ramp: arrivals on the profile's schedule (bench.profiles), at most `concurrency` in flight."""
        spec = self.spec
        rng = random.Random(f"{spec.seed}:{spec.level}:{self.worker}")
        cap = asyncio.Semaphore(spec.concurrency)
        running: set[asyncio.Task] = set()
        for k, t_s in enumerate(profile.arrival_times(spec.arrival, rng, spec.phase)):
            scheduled = spec.start_at_ns + int(t_s * 1e9)
            await _sleep_until(scheduled)
            await cap.acquire()
            if self._stopped:
                break
            task = asyncio.ensure_future(self._tracked(self._one(scheduled, k < spec.warmup)))
            running.add(task)
            task.add_done_callback(lambda t: (running.discard(t), cap.release()))
        if running:
            await asyncio.gather(*running, return_exceptions=True)
