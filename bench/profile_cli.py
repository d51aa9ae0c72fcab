"""The flags of a --profile run (load over time, time line, capacity): added to and read for bench.cli."""

from __future__ import annotations

from bench.config import DEFAULT_RATE_CAP, UsageError


def add_arguments(p) -> None:
    g = p.add_argument_group("load over time (benchmark the autoscaler; docs/bench.md)")
    g.add_argument("--profile", metavar="KIND:LOAD@DURATION,...",
                   help="one continuous run whose load changes: step:RATE@DUR,..., ramp:FROM..TO@DUR or "
                        "cstep:C@DUR,... (e.g. step:2@60s,8@120s); replaces --rate/--duration")
    g.add_argument("--window", default="10s", help="time-line window (default 10s)")
    g.add_argument("--slo-target", default="95%",
                   help="a window meets the SLO when this share of its requests do (default 95%%)")
    g.add_argument("--capacity", metavar="SOURCE",
                   help="poll capacity from: mock, fixed:N, sagemaker:ENDPOINT[/VARIANT][@REGION], "
                        "gke:[NAMESPACE/]DEPLOYMENT[,HPA] (default: the stack's `capacity` output)")
    g.add_argument("--capacity-interval", default="5s", help="how often capacity is polled (default 5s)")


def settings(args, parse_duration, parse_fraction, stack_capacity: dict | None) -> dict:
    """BenchConfig fields for the profile flags (and `concurrency` when a profile sets it); UsageError naming the flag."""
    from bench.capacity import parse_capacity_flag
    from bench.profiles import ProfileError, parse_profile

    if not args.profile:
        for flag, value, default in (("--capacity", args.capacity, None), ("--window", args.window, "10s")):
            if value != default:
                raise UsageError(f"{flag} is for a --profile run; add --profile (e.g. --profile step:2@60s,8@120s)")
        return {}
    try:
        profile = parse_profile(args.profile)
    except ProfileError as exc:
        raise UsageError(str(exc)) from None
    for flag, value in (("--rate", args.rate), ("--duration", args.duration), ("--requests", args.requests)):
        if value is not None:
            raise UsageError(f"{flag} does not go with --profile: the profile sets the load and the duration")
    if args.warmup:
        raise UsageError("--warmup does not go with --profile: a warmup would shift the time line")
    out: dict = {
        "profile": profile,
        "window_s": parse_duration(args.window, "--window"),
        "slo_target": parse_fraction(args.slo_target, "--slo-target"),
        "capacity_interval_s": parse_duration(args.capacity_interval, "--capacity-interval"),
    }
    if out["window_s"] > profile.duration_s:
        raise UsageError(f"--window {args.window}: longer than the profile ({profile.duration_s:g} s)")
    if profile.closed_loop:
        if args.concurrency:
            raise UsageError("--concurrency does not go with --profile cstep: the profile sets C")
        out["concurrency"] = (int(profile.peak),)
    else:
        cap = DEFAULT_RATE_CAP
        if args.concurrency:
            try:
                cap = int(args.concurrency)
            except ValueError:
                cap = 0
            if cap < 1:
                raise UsageError(f"--concurrency {args.concurrency!r}: with --profile step/ramp, one in-flight cap >= 1")
        out["concurrency"] = (cap,)
    if args.capacity:
        try:
            out["capacity"] = parse_capacity_flag(args.capacity)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    elif stack_capacity:
        out["capacity"] = stack_capacity
    return out
