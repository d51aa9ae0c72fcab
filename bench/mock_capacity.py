"""Scripted capacity for the mock server: N slots serve at once, the rest wait in a FIFO queue.

The slots change on a schedule (`capacity_schedule`, seconds after the server started -> slots) or as an
autoscaler would (`Autoscale`): when more than `queue_above` requests wait for `sustain_s` on end (the
alarm's evaluation periods; a request turned away at a full queue counts as a long queue), the desired
capacity grows by `step` slots and those slots serve
`provision_s` later (an instance starting). Every change is logged with its wall-clock time, so a
benchmark's figures (scale-out lag, seconds in SLO violation) can be checked against what really happened.
The server exposes it as `/capacity` (JSON) and as vLLM's Prometheus gauges on `/metrics`.

Everything here runs on the server's event loop (no locks); other threads only read ints and lists.
"""

from __future__ import annotations

import asyncio
import collections
import math
import time
from dataclasses import dataclass

TICK_S = 0.05  # how often the controller looks at the queue and the schedule


@dataclass(frozen=True)
class Autoscale:
    """A scripted autoscaler: scale out when the queue stays long, the new slots ready after a delay."""

    max_slots: int
    queue_above: int = 0  # scale out when more than this many requests wait ...
    sustain_s: float = 5.0  # ... for this long without a break
    provision_s: float = 10.0  # the new slots serve this long after the decision (instance start-up)
    step: int | None = None  # slots added per scale-out (default: one instance's slots)
    cooldown_s: float = 0.0  # no new scale-out decision this soon after the last one
    scale_in_idle_s: float | None = None  # remove `step` slots after this long with spare slots (None: never)

    def __post_init__(self):
        if self.max_slots < 1:
            raise ValueError(f"autoscale max_slots={self.max_slots}: must be >= 1")
        if self.queue_above < 0:
            raise ValueError(f"autoscale queue_above={self.queue_above}: must be >= 0")
        for name in ("sustain_s", "provision_s", "cooldown_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"autoscale {name}={getattr(self, name)}: must be >= 0 seconds")
        if self.step is not None and self.step < 1:
            raise ValueError(f"autoscale step={self.step}: must be >= 1 slot")
        if self.scale_in_idle_s is not None and self.scale_in_idle_s <= 0:
            raise ValueError(f"autoscale scale_in_idle_s={self.scale_in_idle_s}: must be > 0 seconds (or None)")


def check_capacity_config(max_concurrent, capacity_schedule, autoscale, slots_per_instance, max_queue) -> None:
    """The capacity part of MockConfig's validation: each bad value named with how to fix it."""
    if max_concurrent is not None and max_concurrent < 1:
        raise ValueError(f"max_concurrent={max_concurrent}: must be >= 1 slot (or None for no limit)")
    if (capacity_schedule or autoscale) and max_concurrent is None:
        raise ValueError("capacity_schedule and autoscale need max_concurrent (the starting slots)")
    if capacity_schedule and autoscale:
        raise ValueError("give capacity_schedule or autoscale, not both")
    last = -1.0
    for entry in capacity_schedule or ():
        try:
            t_s, slots = entry
        except (TypeError, ValueError):
            raise ValueError(f"capacity_schedule entry {entry!r}: expected (seconds, slots)") from None
        if t_s < 0 or t_s <= last:
            raise ValueError(f"capacity_schedule: times must be >= 0 and increasing, got {t_s} after {last}")
        if slots < 0:
            raise ValueError(f"capacity_schedule at {t_s} s: slots={slots} must be >= 0")
        last = t_s
    if autoscale and max_concurrent is not None and autoscale.max_slots < max_concurrent:
        raise ValueError(f"autoscale max_slots={autoscale.max_slots} is below max_concurrent={max_concurrent}")
    if slots_per_instance is not None and slots_per_instance < 1:
        raise ValueError(f"slots_per_instance={slots_per_instance}: must be >= 1")
    if max_queue is not None and max_queue < 0:
        raise ValueError(f"max_queue={max_queue}: must be >= 0 (or None for no limit)")


def parse_schedule(text: str) -> tuple[tuple[float, int], ...]:
    """`0:4,30:8` -> ((0.0, 4), (30.0, 8)): seconds after the server started -> slots."""
    entries = []
    for part in text.split(","):
        t_s, sep, slots = part.strip().partition(":")
        try:
            if not sep:
                raise ValueError
            entries.append((float(t_s), int(slots)))
        except ValueError:
            raise ValueError(f"--capacity-schedule {part!r}: expected SECONDS:SLOTS, e.g. 0:4,30:8") from None
    return tuple(entries)


def parse_autoscale(text: str) -> Autoscale:
    """`max=8,queue=2,sustain=5,provision=20,step=4,cooldown=0,scale_in=60` -> Autoscale."""
    names = {"max": "max_slots", "queue": "queue_above", "sustain": "sustain_s", "provision": "provision_s",
             "step": "step", "cooldown": "cooldown_s", "scale_in": "scale_in_idle_s"}
    kwargs: dict = {}
    for part in text.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep or key not in names:
            raise ValueError(f"--autoscale {part!r}: expected KEY=VALUE with KEY one of {', '.join(names)}")
        try:
            kwargs[names[key]] = int(value) if key in ("max", "queue", "step") else float(value)
        except ValueError:
            raise ValueError(f"--autoscale {key}={value!r}: not a number") from None
    if "max_slots" not in kwargs:
        raise ValueError("--autoscale needs max=SLOTS (the most slots it scales to)")
    return Autoscale(**kwargs)


class Capacity:
    """The slot gate and its controller. `acquire()`/`release()` around each served request."""

    def __init__(self, slots: int, schedule=(), autoscale: Autoscale | None = None,
                 slots_per_instance: int | None = None, max_queue: int | None = None):
        self.slots = slots  # serving now (the instances that are ready)
        self.desired = slots  # what the autoscaler asked for (ready + starting)
        self.min_slots = slots
        self.slots_per_instance = slots_per_instance or slots
        self.max_queue = max_queue
        self.running = 0
        self.rejected = 0  # turned away because the queue was full
        self._rejected_seen = 0
        self._waiters: collections.deque = collections.deque()
        self._schedule = list(schedule)
        self._autoscale = autoscale
        self._step = (autoscale.step if autoscale and autoscale.step else self.slots_per_instance)
        self._pending: list[tuple[float, int]] = []  # (monotonic time ready, slots then)
        self._over_since: float | None = None
        self._spare_since: float | None = None
        self._last_decision = -math.inf
        self.t0_mono = time.monotonic()
        self.t0_unix = time.time()
        # Each change: {"t_s" (since start), "unix", "kind": ready|desired, "from", "to"} in slots.
        self.events: list[dict] = []
        self._task: asyncio.Task | None = None

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def instances(self, slots: int) -> int:
        return math.ceil(slots / self.slots_per_instance)

    # -- the gate --------------------------------------------------------------------------------------
    def full(self) -> bool:
        """Whether a new request would be turned away (the queue is at max_queue)."""
        return (self.max_queue is not None and self.running >= self.slots
                and len(self._waiters) >= self.max_queue)

    async def acquire(self) -> bool:
        """Take a slot, waiting in line if none is free; True when it had to wait."""
        if self.running < self.slots and not self._waiters:
            self.running += 1
            return False
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # the slot was handed over as the client went away
            else:
                try:
                    self._waiters.remove(fut)
                except ValueError:
                    pass
            raise
        return True

    def release(self) -> None:
        self.running -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.running < self.slots:
            fut = self._waiters.popleft()
            if not fut.done():
                self.running += 1  # handed over: the waiter owns it when it resumes
                fut.set_result(None)

    # -- the controller --------------------------------------------------------------------------------
    def _log(self, kind: str, old: int, new: int, now: float) -> None:
        self.events.append({"t_s": round(now - self.t0_mono, 3), "unix": round(self.t0_unix + now - self.t0_mono, 3),
                            "kind": kind, "from": old, "to": new})

    def _set_slots(self, slots: int, now: float) -> None:
        if slots != self.slots:
            self._log("ready", self.slots, slots, now)
            self.slots = slots
            self._wake()

    def _set_desired(self, desired: int, now: float) -> None:
        if desired != self.desired:
            self._log("desired", self.desired, desired, now)
            self.desired = desired

    def tick(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        elapsed = now - self.t0_mono
        while self._schedule and self._schedule[0][0] <= elapsed:
            _t, slots = self._schedule.pop(0)
            self._set_desired(slots, now)
            self._set_slots(slots, now)
        while self._pending and self._pending[0][0] <= now:
            self._set_slots(self._pending.pop(0)[1], now)
        scaler = self._autoscale
        if scaler is None:
            return
        # Requests turned away at a full queue since the last tick count as a long queue (the longest it gets).
        turned_away = self.rejected > self._rejected_seen
        self._rejected_seen = self.rejected
        if len(self._waiters) > scaler.queue_above or turned_away:
            self._spare_since = None
            if self._over_since is None:
                self._over_since = now
            elif (now - self._over_since >= scaler.sustain_s and now - self._last_decision >= scaler.cooldown_s
                  and self.desired < scaler.max_slots):
                self._set_desired(min(scaler.max_slots, self.desired + self._step), now)
                self._pending.append((now + scaler.provision_s, self.desired))
                self._last_decision = now
                self._over_since = None  # a new decision needs a new sustained breach
            return
        self._over_since = None
        if scaler.scale_in_idle_s is None or self._pending or self.desired <= self.min_slots:
            return
        if not self._waiters and self.running <= self.slots - self._step:
            if self._spare_since is None:
                self._spare_since = now
            elif now - self._spare_since >= scaler.scale_in_idle_s:
                new = max(self.min_slots, self.desired - self._step)
                self._set_desired(new, now)
                self._set_slots(new, now)
                self._spare_since = None
        else:
            self._spare_since = None

    async def _run(self) -> None:
        while True:
            self.tick()
            await asyncio.sleep(TICK_S)

    def start(self) -> None:
        self.t0_mono = time.monotonic()
        self.t0_unix = time.time()
        self.tick()
        if self._schedule or self._autoscale:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    def snapshot(self) -> dict:
        return {
            "slots": self.slots,
            "desired_slots": self.desired,
            "instances": self.instances(self.slots),
            "desired_instances": self.instances(self.desired),
            "slots_per_instance": self.slots_per_instance,
            "running": self.running,
            "waiting": len(self._waiters),
            "rejected": self.rejected,
            "t_s": round(time.monotonic() - self.t0_mono, 3),
            "unix": round(time.time(), 3),
            "events": list(self.events),
        }


def prometheus_text(model: str, running: int, waiting: int, generation_tokens: int, prompt_tokens: int,
                    successes: int, capacity: Capacity | None) -> str:
    """vLLM's /metrics names and labels (vLLM 0.32 on the CPU, ../shared/REFERENCE.md), plus mock: gauges."""
    labels = f'{{engine="0",model_name="{model}"}}'
    usage = (running / capacity.slots if capacity and capacity.slots else 0.0)
    lines = [
        "# HELP vllm:num_requests_running Number of requests in model execution batches.",
        "# TYPE vllm:num_requests_running gauge",
        f"vllm:num_requests_running{labels} {float(running)}",
        "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.",
        "# TYPE vllm:num_requests_waiting gauge",
        f"vllm:num_requests_waiting{labels} {float(waiting)}",
        "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.",
        "# TYPE vllm:kv_cache_usage_perc gauge",
        f"vllm:kv_cache_usage_perc{labels} {usage}",
        "# HELP vllm:generation_tokens_total Number of generation tokens processed.",
        "# TYPE vllm:generation_tokens_total counter",
        f"vllm:generation_tokens_total{labels} {float(generation_tokens)}",
        "# HELP vllm:prompt_tokens_total Number of prefill tokens processed.",
        "# TYPE vllm:prompt_tokens_total counter",
        f"vllm:prompt_tokens_total{labels} {float(prompt_tokens)}",
        "# HELP vllm:request_success_total Count of successfully processed requests.",
        "# TYPE vllm:request_success_total counter",
        f'vllm:request_success_total{{engine="0",finished_reason="length",model_name="{model}"}} {float(successes)}',
    ]
    if capacity is not None:
        lines += [
            "# HELP mock:capacity_slots Slots serving now (the mock's scripted capacity).",
            "# TYPE mock:capacity_slots gauge",
            f"mock:capacity_slots {float(capacity.slots)}",
            "# HELP mock:desired_slots Slots the mock's autoscaler asked for.",
            "# TYPE mock:desired_slots gauge",
            f"mock:desired_slots {float(capacity.desired)}",
        ]
    return "\n".join(lines) + "\n"
