"""Load from many machines: `--shard I/N` runs share I of N of a run, `--start-at` starts them together.

Shard I of N sends its part of every level: the concurrency (or the in-flight cap) and --requests split
as evenly as whole numbers allow (the parts add up to the whole), and 1/N of an arrival rate. Each shard
has its own seed (`seed * N + I`) and its own prompt tags, so two shards never send the same request,
while shared prefixes (--shared-prefix-tokens) stay those of --seed on every shard.

`--start-at` is an agreed wall-clock time (ISO 8601 or Unix seconds): every shard waits for it, then
starts its first level, so the shards' load overlaps from the first request. Machines' clocks must agree
(NTP keeps them within milliseconds). Later levels start when this shard finishes the one before, so for
a multi-level sweep give every level a --duration (each level then ends at about the same time everywhere).
Each level's summary records `start_unix_s`, the wall-clock time of its start, which `bench merge` uses to
put every shard's records on one time line.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import time

from bench.config import Level, UsageError, _share


def parse_shard(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m or int(m.group(2)) < 1 or int(m.group(1)) >= int(m.group(2)):
        raise UsageError(f"--shard {text!r}: expected I/N with 0 <= I < N, e.g. 0/4 for the first of four")
    return int(m.group(1)), int(m.group(2))


def parse_start_at(text: str, now: float | None = None) -> float:
    """ISO 8601 (a time zone is required: machines may not share one) or Unix seconds -> Unix seconds."""
    raw = text.strip()
    try:
        value = float(raw)
    except ValueError:
        try:
            when = dt.datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            raise UsageError(
                f"--start-at {text!r}: expected an ISO 8601 time with a zone (2026-12-01T10:00:00Z) or Unix seconds"
            ) from None
        if when.tzinfo is None:
            raise UsageError(f"--start-at {text!r}: give a time zone (append Z for UTC): shards may run in other zones") from None
        value = when.timestamp()
    now = time.time() if now is None else now
    if value < now - 60:
        raise UsageError(f"--start-at {text!r}: that is {now - value:.0f} s in the past; agree on a time ahead")
    return value


def shard_levels(levels: list[Level], index: int, count: int) -> list[Level]:
    """Shard `index`'s part of each level; refuses a level too small to give every shard a slot."""
    out = []
    for lv in levels:
        slots = _share(lv.concurrency, [1] * count)[index]
        if slots < 1:
            what = "--concurrency" if lv.rate is None else "the in-flight cap (--concurrency)"
            raise UsageError(
                f"{what} {lv.concurrency} with --shard {index}/{count}: every shard needs at least one slot; "
                f"give at least {count} or use fewer shards"
            )
        rate = None if lv.rate is None else lv.rate / count
        warmup = _share(lv.warmup, [1] * count)[index]
        if rate is not None and warmup == 0 and lv.warmup:
            warmup = min(slots, math.ceil(rate))
        out.append(Level(lv.index, slots, rate, warmup))
    return out


def wait_until(unix_s: float, sleep=time.sleep, clock=time.time) -> None:
    """Sleep until the wall clock reads `unix_s` (checked again after each sleep: a sleep can return early)."""
    while (left := unix_s - clock()) > 0:
        sleep(min(left, 1.0))
