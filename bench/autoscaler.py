"""What the autoscaler did during a --profile run, from the time line (bench.timeline) and the profile.

- scale events: every change of the polled capacity, `{"t_s", "kind", "from", "to"}`; kind `desired` (the
  autoscaler decided) or `ready` (the instances serve). Seen at the poll's time, so up to one poll
  interval after it happened.
- a window is in SLO violation when its attainment is below the target (`--slo-target`, default 0.95:
  "p95 within the SLO"); windows nobody sent in are neither. `slo_violation_s` adds up their lengths.
- per load rise (a step up, or a rising ramp's start): `slo_back_s` from the rise to the start of the
  first good window after the first violation that follows it (0 when the SLO held), `capacity_ready_s`
  and `capacity_desired_s` from the rise to the first capacity above the one at the rise; each looked
  for only until the next rise. Both are window- or poll-resolution figures.
- failed requests around scale events: failures sent within one window either side of an event.
- instance-hours: the polled `current` instances integrated over the run (before the first poll, the
  first value); with no capacity reader, `--instance-count` for the whole run. Dollars: instance-hours x
  the price of one instance; cost per 1k output tokens over the whole profile.
"""

from __future__ import annotations

from bench.profiles import Profile
from bench.timeline import Timeline


def scale_events(samples) -> list[dict]:
    events = []
    prev = None
    for t_s, current, desired in samples:
        if prev is not None:
            if desired is not None and prev[1] is not None and desired != prev[1]:
                events.append({"t_s": round(t_s, 3), "kind": "desired", "from": prev[1], "to": desired})
            if current is not None and prev[0] is not None and current != prev[0]:
                events.append({"t_s": round(t_s, 3), "kind": "ready", "from": prev[0], "to": current})
        prev = (current if current is not None else (prev[0] if prev else None),
                desired if desired is not None else (prev[1] if prev else None))
    return events


def _violated(row: dict, target: float) -> bool:
    return row["slo_attainment"] is not None and row["slo_attainment"] < target


def _first_above(samples, index: int, t_from: float, t_to: float) -> float | None:
    """When the capacity (index 1 current, 2 desired) first rose above its value at t_from, in [t_from, t_to)."""
    base = None
    for sample in samples:
        if sample[0] <= t_from and sample[index] is not None:
            base = sample[index]
    for sample in samples:
        t, value = sample[0], sample[index]
        if t < t_from or t >= t_to or value is None:
            continue
        if base is None:
            base = value
        elif value > base:
            return t
    return None


def scale_out_lags(rows: list[dict], profile: Profile, samples, target: float, duration_s: float) -> list[dict]:
    rises = profile.load_rises()
    out = []
    for i, (t_rise, before, after) in enumerate(rises):
        t_next = rises[i + 1][0] if i + 1 < len(rises) else duration_s
        window = [r for r in rows if r["t_s"] + r["window_s"] > t_rise + 1e-9 and r["t_s"] < t_next - 1e-9]
        slo_back = 0.0
        seen_violation = False
        for row in window:
            if _violated(row, target):
                seen_violation = True
            elif seen_violation and row["slo_attainment"] is not None:
                slo_back = row["t_s"] - t_rise
                break
        else:
            if seen_violation:
                slo_back = None  # still in violation when the next rise (or the end) came
        ready = _first_above(samples, 1, t_rise, t_next)
        desired = _first_above(samples, 2, t_rise, t_next)
        out.append({
            "t_s": round(t_rise, 3), "load_from": before, "load_to": after,
            "slo_back_s": None if slo_back is None else round(max(0.0, slo_back), 3),
            "capacity_desired_s": None if desired is None else round(desired - t_rise, 3),
            "capacity_ready_s": None if ready is None else round(ready - t_rise, 3),
        })
    return out


def instance_hours(samples, duration_s: float, fixed_count: int) -> float:
    points = [(t, c) for t, c, _d in samples if c is not None]
    if not points:
        return fixed_count * duration_s / 3600
    total = 0.0
    current = points[0][1]
    t_prev = 0.0
    for t, c in points:
        t = min(max(t, 0.0), duration_s)
        total += current * (t - t_prev)
        t_prev, current = t, c
    total += current * max(0.0, duration_s - t_prev)
    return total / 3600


def analyse(timeline: Timeline, rows: list[dict], profile: Profile, target: float, price_per_hour: float | None,
            fixed_count: int, capacity_source: str | None, capacity_note: str | None = None) -> dict:
    """The `autoscaler` section of summary.json."""
    duration = profile.duration_s
    samples = timeline.capacity
    events = scale_events(samples)
    w = timeline.window_s
    near: set[int] = set()  # each failure once, however many events it is near
    for event in events:
        hits = [i for i, (t, _kind) in enumerate(timeline.failures) if abs(t - event["t_s"]) <= w]
        event["failed_near"] = len(hits)
        near.update(hits)
    hours = instance_hours(samples, duration, fixed_count)
    dollars = None if price_per_hour is None else hours * price_per_hour
    tokens = timeline.output_tokens
    return {
        "profile": profile.describe(),
        "window_s": w,
        "slo_target": target,
        "capacity_source": capacity_source,
        "capacity_note": capacity_note,
        "capacity_samples": [list(sample) for sample in samples],  # (t_s, current, desired)
        "scale_events": events,
        "scale_out": scale_out_lags(rows, profile, samples, target, duration),
        "slo_violation_s": round(sum(r["window_s"] for r in rows if _violated(r, target)), 3),
        "windows_in_violation": sum(1 for r in rows if _violated(r, target)),
        "failed_requests": len(timeline.failures),
        "failed_near_scale_events": len(near),
        "instance_hours": round(hours, 6),
        "instance_hours_source": "polled capacity" if any(c is not None for _t, c, _d in samples)
        else f"--instance-count {fixed_count} for the whole run",
        "cost_usd": None if dollars is None else round(dollars, 6),
        "output_tokens": tokens,
        "cost_per_1k_tokens_usd": None if dollars is None or not tokens else round(dollars / tokens * 1000, 6),
    }


def _say(message: str) -> None:
    import sys

    print(f"capacity: {message}; the run goes on without it (see summary.json autoscaler.capacity_note)",
          file=sys.stderr, flush=True)


class ProfileWatch:
    """A --profile level's time line and capacity poller; the runner feeds it records."""

    def __init__(self, cfg, start_at_ns: int):
        from bench.capacity import CapacityPoller, CapacityUnavailable, from_spec

        self.cfg = cfg
        self.timeline = Timeline(cfg.window_s, cfg.slo, cfg.profile.duration_s)
        self.poller = None
        self.source = None
        self.note = None
        if cfg.capacity is None:
            self.note = ("no capacity reader (pass --stack or --capacity): instance-hours assume "
                         f"--instance-count {cfg.instance_count} throughout")
        else:
            try:
                reader = from_spec(cfg.capacity, cfg.base_url)
                self.source = reader.name
                self.poller = CapacityPoller(reader, cfg.capacity_interval_s)
                self.poller.on_first_error = _say
                self.poller.start(start_at_ns)
            except CapacityUnavailable as exc:
                self.note = f"capacity not read: {exc}"
                _say(str(exc))
            except (KeyError, TypeError) as exc:
                self.note = f"capacity not read: the capacity spec {cfg.capacity!r} lacks {exc}"
        self.add = self.timeline.add

    def finish(self) -> tuple[list[dict], dict]:
        if self.poller is not None:
            self.poller.stop()
            self.timeline.capacity = list(self.poller.samples)
            if self.poller.last_error:
                self.note = f"{self.poller.errors} capacity reads failed, the last: {self.poller.last_error}"
        rows = self.timeline.rows()
        cfg = self.cfg
        result = analyse(self.timeline, rows, cfg.profile, cfg.slo_target, cfg.price_per_hour, cfg.instance_count,
                         self.source, self.note)
        return rows, result

    def attach(self, summary: dict, out_dir) -> None:
        """timeline.jsonl, and summary["timeline"] / summary["autoscaler"]."""
        import orjson

        rows, result = self.finish()
        (out_dir / "timeline.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
        summary["timeline"] = rows
        summary["autoscaler"] = result


def report_lines(summary: dict) -> list[str]:
    """report.md's section for a --profile run: what the autoscaler did, and the time line."""
    auto, rows = summary.get("autoscaler"), summary.get("timeline")
    if not auto or rows is None:
        return []

    def f(value, spec=".1f"):
        return "-" if value is None else format(value, spec)

    price = summary["config"].get("price_per_hour_usd")
    lines = [
        "## The autoscaler",
        "",
        f"Profile `{auto['profile']}`, windows of {auto['window_s']:g} s; a window is in SLO violation when fewer "
        f"than {auto['slo_target']:.0%} of the requests sent in it met the SLO. Capacity: "
        f"{auto['capacity_source'] or 'not read'}" + (f" ({auto['capacity_note']})" if auto.get("capacity_note") else "")
        + ".",
        "",
        f"- Seconds in SLO violation: **{f(auto['slo_violation_s'])} s** ({auto['windows_in_violation']} windows)",
        f"- Failed requests: {auto['failed_requests']}, of them {auto['failed_near_scale_events']} within one window "
        "of a scale event",
        f"- Instance-hours: {auto['instance_hours']:.4f} ({auto['instance_hours_source']})"
        + (f"; cost ${f(auto['cost_usd'], '.4f')} at ${price:g}/h per instance, "
           f"${f(auto['cost_per_1k_tokens_usd'], '.5f')} per 1k output tokens over the profile" if price else
           "; no price given (no cost figures)"),
        "",
        "| load rise at | from | to | capacity asked for after | capacity ready after | SLO back after |",
        "|---|---|---|---|---|---|",
    ]
    for lag in auto["scale_out"]:
        back = "still violated" if lag["slo_back_s"] is None else f"{lag['slo_back_s']:g} s"
        lines.append(f"| {lag['t_s']:g} s | {lag['load_from']:g} | {lag['load_to']:g} | "
                     f"{f(lag['capacity_desired_s'])} s | {f(lag['capacity_ready_s'])} s | {back} |")
    lines.append("")
    if auto["scale_events"]:
        lines += ["| scale event at | kind | from | to | failed near |", "|---|---|---|---|---|"]
        lines += [f"| {e['t_s']:g} s | {e['kind']} | {e['from']} | {e['to']} | {e['failed_near']} |"
                  for e in auto["scale_events"]]
        lines.append("")
    else:
        lines += ["No scale event was seen.", ""]
    lines += [
        "Time line (timeline.jsonl; requests by the window they were sent in, tokens by the one they finished in):",
        "",
        "| t (s) | req/s | output tok/s | TTFT p50 | TTFT p95 | E2E p95 | errors | SLO | capacity |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cap = r["capacity"]
        cap_text = "-" if not cap else f"{cap['current']} (desired {cap['desired']})"
        slo = r["slo_attainment"]
        lines.append(f"| {r['t_s']:g} | {r['rps']:.2f} | {r['output_tok_s']:.1f} | {f(r['ttft_ms']['p50'])} | "
                     f"{f(r['ttft_ms']['p95'])} | {f(r['e2e_ms']['p95'], '.0f')} | {r['errors']} | "
                     f"{'-' if slo is None else format(slo, '.0%')} | {cap_text} |")
    lines.append("")
    return lines
