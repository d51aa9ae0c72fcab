"""Load that changes over time, in one continuous run: `--profile` and its arrival schedule.

  step:RATE@DURATION,...        open loop, the rate (req/s) held for each duration in turn
  ramp:FROM..TO@DURATION,...    open loop, the rate rising (or falling) linearly; a bare RATE@DURATION holds
  cstep:C@DURATION,...          closed loop, C requests in flight for each duration in turn

e.g. `step:2@60s,8@120s,2@120s`, `ramp:1..16@5m`, `cstep:4@30s,32@4m`. Arrivals are Poisson unless
`--arrival constant`. An open-loop profile is an inhomogeneous Poisson process by time rescaling: with
Lambda(t) the integral of the rate, arrival k is at Lambda^-1(E_1 + ... + E_k), E_i unit exponentials
(constant arrivals: at Lambda^-1(k + phase)), so the schedule follows the rate exactly through ramps and
steps, with no pause between segments. Work is split over workers by scaling the rate (or sharing C).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

KINDS = ("step", "ramp", "cstep")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)?")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


class ProfileError(ValueError):
    """A bad --profile: the message names the part and shows the form."""


@dataclass(frozen=True)
class Segment:
    start_s: float
    duration_s: float
    begin: float  # rate (req/s) or concurrency at the segment's start
    end: float  # ... at its end (a ramp when it differs from begin)

    @property
    def end_s(self) -> float:
        return self.start_s + self.duration_s


@dataclass(frozen=True)
class Profile:
    kind: str  # step | ramp | cstep
    segments: tuple[Segment, ...]

    @property
    def closed_loop(self) -> bool:
        return self.kind == "cstep"

    @property
    def duration_s(self) -> float:
        return self.segments[-1].end_s

    @property
    def peak(self) -> float:
        return max(max(s.begin, s.end) for s in self.segments)

    def load_at(self, t_s: float) -> float:
        """The rate (or concurrency) the profile asks for at t_s (0 outside it)."""
        for seg in self.segments:
            if seg.start_s <= t_s < seg.end_s:
                return seg.begin + (seg.end - seg.begin) * (t_s - seg.start_s) / seg.duration_s
        return 0.0

    def load_rises(self) -> list[tuple[float, float, float]]:
        """(t_s, before, after) for every step up in load, and the start of every rising ramp."""
        out = []
        before = 0.0
        for seg in self.segments:
            if seg.begin > before or seg.end > seg.begin:
                out.append((seg.start_s, before, max(seg.begin, seg.end)))
            before = seg.end
        return out

    def describe(self) -> str:
        parts = []
        for seg in self.segments:
            load = f"{seg.begin:g}" if seg.begin == seg.end else f"{seg.begin:g}..{seg.end:g}"
            parts.append(f"{load}@{seg.duration_s:g}s")
        return f"{self.kind}:" + ",".join(parts)

    def public(self) -> dict:
        return {"spec": self.describe(), "kind": self.kind, "duration_s": self.duration_s,
                "segments": [[s.start_s, s.duration_s, s.begin, s.end] for s in self.segments]}

    def scaled(self, factor: float) -> Profile:
        """This profile at `factor` times the rate (one worker's share of an open loop)."""
        return Profile(self.kind, tuple(Segment(s.start_s, s.duration_s, s.begin * factor, s.end * factor)
                                        for s in self.segments))

    def shared(self, shares: list[int]) -> list[Profile]:
        """A closed-loop profile split over workers: each step's C shared out exactly (largest remainders)."""
        from bench.config import _share

        per_segment = [_share(int(s.begin), shares) for s in self.segments]
        return [Profile(self.kind, tuple(Segment(s.start_s, s.duration_s, c[w], c[w])
                                         for s, c in zip(self.segments, per_segment, strict=True)))
                for w in range(len(shares))]

    # -- the open-loop schedule ------------------------------------------------------------------------
    def cumulative(self, t_s: float) -> float:
        """Lambda(t): the expected arrivals from 0 to t_s."""
        total = 0.0
        for seg in self.segments:
            if t_s <= seg.start_s:
                break
            x = min(t_s, seg.end_s) - seg.start_s
            total += seg.begin * x + (seg.end - seg.begin) * x * x / (2 * seg.duration_s)
        return total

    def inverse(self, arrivals: float) -> float | None:
        """Lambda^-1: when the expected arrivals reach `arrivals`; None after the profile's end."""
        left = arrivals
        for seg in self.segments:
            a, b, d = seg.begin, seg.end, seg.duration_s
            area = (a + b) * d / 2
            if left > area:
                left -= area
                continue
            if b == a:
                return seg.start_s + (left / a if a else 0.0)
            k = (b - a) / (2 * d)  # k x^2 + a x = left
            x = (-a + math.sqrt(a * a + 4 * k * left)) / (2 * k)
            return seg.start_s + min(max(x, 0.0), d)
        return None

    def arrival_times(self, arrival: str, rng, phase: float = 0.0):
        """Arrival times (seconds from the start) of this open-loop profile, until its end.

        constant: at Lambda^-1(k + phase), k = 0, 1, ... (as a fixed-rate level: the first at phase / rate);
        poisson: at Lambda^-1(E_1 + ... + E_k)."""
        u = phase
        while True:
            if arrival != "constant":
                u += rng.expovariate(1.0)
            t = self.inverse(u)
            if t is None or t >= self.duration_s:
                return
            yield t
            if arrival == "constant":
                u += 1.0

def parse_profile(text: str) -> Profile:
    kind, sep, body = text.strip().partition(":")
    if not sep or kind not in KINDS:
        raise ProfileError(
            f"--profile {text!r}: expected step:RATE@DURATION,..., ramp:FROM..TO@DURATION or cstep:C@DURATION,... "
            "e.g. step:2@60s,8@120s"
        )
    segments = []
    start = 0.0
    for part in body.split(","):
        part = part.strip()
        load, at, duration = part.partition("@")
        m = _DURATION.fullmatch(duration.strip())
        if not at or not m or float(m.group(1)) <= 0:
            raise ProfileError(f"--profile {kind}: {part!r} needs LOAD@DURATION with a positive duration, e.g. 8@60s")
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
        low, dots, high = load.partition("..")
        if dots and kind != "ramp":
            raise ProfileError(f"--profile {kind}: {part!r}: FROM..TO is for ramp:, not {kind}:")
        try:
            begin = float(low)
            end = float(high) if dots else begin
        except ValueError:
            raise ProfileError(f"--profile {kind}: {part!r}: {load!r} is not a number") from None
        if begin < 0 or end < 0:
            raise ProfileError(f"--profile {kind}: {part!r}: the load must be >= 0")
        if kind == "cstep" and (begin != int(begin) or begin < 1):
            raise ProfileError(f"--profile cstep: {part!r}: concurrency must be a whole number >= 1")
        segments.append(Segment(start, seconds, begin, end))
        start += seconds
    if kind != "cstep" and not any(s.begin or s.end for s in segments):
        raise ProfileError(f"--profile {text!r}: every rate is 0: nothing would be sent")
    return Profile(kind, tuple(segments))


def from_public(obj) -> Profile | None:
    """The profile a LevelSpec carries to a worker (lists after JSON), back to a Profile."""
    if obj is None:
        return None
    if isinstance(obj, Profile):
        return obj
    return Profile(obj["kind"], tuple(Segment(*map(float, s)) for s in obj["segments"]))
