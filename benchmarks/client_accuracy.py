"""How exact the load tester is: its TTFT/ITL error against the mock server's truth, its CPU, rate and memory.

Two processes on this machine: the mock server (`python -m bench mock-server`, scripted TTFT/ITL; it also
measures when it really wrote each chunk and sends that in its `: metrics {...}` comment), and
`python -m bench` run as a subprocess exactly as a user runs it. bench keeps the comment per request
(`server_ttft_ms`, `server_extra.mock_itl_ms` in requests.jsonl), so every request is judged against what
was sent, not what was planned:

  TTFT error  = client TTFT - server TTFT (server: request handler entered -> first content chunk written),
                per request, at each concurrency level; it includes the loopback trip both ways and the
                server's HTTP parsing, which any client measures too. A record without the truth is judged
                against the configured TTFT/ITL, and the output says how many were.
  ITL error   = client gap - server gap, for every content chunk, pooled.
  client CPU  = user+sys of the whole bench process tree (os.wait4 of the subprocess: parent + workers),
                minus the median of --baseline-runs 1-request runs (start-up, spawn, report), divided by the
                extra requests sent (warmup included); and the workers' event-loop CPU alone, as bench
                reports it (`client_cpu_ms_per_request`). The first is noisy for small --requests.
  peak RSS    = ru_maxrss of the tree (the largest single process).
  rate        = open-loop `--rate` steps (constant arrivals) against a fast mock (TTFT/ITL ~1 ms, few
                tokens): the highest rate with achieved >= 95% of offered, no failures and client lag
                p99 <= --max-lag-ms, for each --workers count.
  memory      = RSS (/proc VmRSS, summed) of the bench process tree sampled every 0.5 s through a long
                closed-loop run against the fast mock: at 10%, 50% and 100% of the level, and the growth
                per request over the second half ("flat": under 4 MB or under 200 B/request).

    .venv/bin/python benchmarks/client_accuracy.py [--levels 8,32,128] [--requests 500] [--workers 1,2]
        [--rates 100,200,400,800,1600] [--memory-duration 120] [--server-processes 1] [--jitter-ms 0]
        [--keep DIR] [--json out.json]
    .venv/bin/python benchmarks/client_accuracy.py --quick        # a smoke test, about a minute

Goal (the issue): at concurrency 32, TTFT error p50 < 1 ms and p99 < 5 ms; memory flat over a long run.
Figures on a shared machine are noisy: the script prints the load average beside them. The mock server
shares the CPUs with the client; `--server-processes 2` spreads it where there are cores to spare.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MODEL = "mock-model"
GOAL_CONCURRENCY, GOAL_P50_MS, GOAL_P99_MS = 32, 1.0, 5.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, timeout: float = 30.0) -> None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with opener.open(url, timeout=1) as response:
                if response.status < 500:
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


class MockServer:
    """`python -m bench mock-server` in its own process (own CPU, own event loop)."""

    def __init__(self, ttft_ms: float, itl_ms: float, processes: int, jitter_ms: float = 0.0):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench", "mock-server", "--port", str(self.port), "--ttft-ms", str(ttft_ms),
             "--itl-ms", str(itl_ms), "--ttft-jitter-ms", str(jitter_ms), "--itl-jitter-ms", str(jitter_ms),
             "--processes", str(processes)],
            cwd=ROOT, stdout=subprocess.DEVNULL, start_new_session=True,  # its own group: stop() ends all of it
        )

    def __enter__(self) -> MockServer:
        try:
            wait_http(f"http://127.0.0.1:{self.port}/health")
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        # The whole process group: with --processes N, SIGTERM to the server's parent alone would leave its
        # children serving (and SIGINT is ignored when this script runs in the background).
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.process.wait(10)
                break
            except subprocess.TimeoutExpired:
                continue
        self.process.wait()


def proc_tree(root: int) -> dict[int, str]:
    """pid -> role ("parent", "worker", "other") of `root` and its descendants, from /proc."""
    parents: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        parents[int(entry.name)] = int(stat[stat.rindex(")") + 2 :].split()[1])
    tree = {root: "parent"}
    grew = True
    while grew:
        grew = False
        for pid, ppid in parents.items():
            if ppid in tree and pid not in tree:
                try:
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                except OSError:
                    continue
                tree[pid] = "worker" if b"spawn_main" in cmdline else "other"
                grew = True
    return tree


def rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_bench(url: str, out: Path, flags: list[str], sample_s: float | None = None) -> dict[str, Any]:
    """`python -m bench` as a subprocess; its exit code, CPU and peak RSS (os.wait4), RSS samples if asked."""
    out.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "bench", url, "--model", MODEL, "--out", str(out), "--no-progress",
            "--no-charts", *flags]
    started = time.perf_counter()
    with open(out / "bench.log", "wb") as log:
        process = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    samples = []
    jsonl = out / "requests.jsonl"
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        if sample_s:
            roles: dict[str, int] = {}
            for child, role in proc_tree(process.pid).items():
                roles[role] = roles.get(role, 0) + rss_kb(child)
            size = jsonl.stat().st_size if jsonl.exists() else 0
            samples.append({"t_s": round(time.perf_counter() - started, 2), "jsonl_bytes": size,
                            **{f"{role}_rss_kb": kb for role, kb in roles.items()}})
        time.sleep(sample_s or 0.02)
    process.returncode = os.waitstatus_to_exitcode(status)
    result = {
        "exit_code": process.returncode,
        "wall_s": round(time.perf_counter() - started, 3),
        "cpu_s": usage.ru_utime + usage.ru_stime,  # the child and every child of it that it waited for
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),  # the largest one process, in KiB on Linux
        "samples": samples,
    }
    if process.returncode not in (0, 3):
        tail = (out / "bench.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"bench exited {process.returncode}: {' '.join(argv)}\n{tail}")
    return result


def read_run(out: Path) -> tuple[dict, list[dict]]:
    summary = json.loads((out / "summary.json").read_text())
    records = [json.loads(line) for line in (out / "requests.jsonl").read_text().splitlines() if line]
    return summary, records


def dist(values, digits: int = 3) -> dict[str, float | int | None]:
    if not len(values):
        return {"n": 0, "p1": None, "p50": None, "p99": None, "mean": None, "max": None}
    arr = np.asarray(values, dtype=np.float64)
    p1, p50, p99 = np.percentile(arr, [1, 50, 99])
    return {"n": int(arr.size), "p1": round(float(p1), digits), "p50": round(float(p50), digits),
            "p99": round(float(p99), digits), "mean": round(float(arr.mean()), digits),
            "max": round(float(arr.max()), digits)}


def accuracy(records: list[dict], ttft_ms: float, itl_ms: float) -> dict[str, Any]:
    """Per request client-minus-server TTFT, pooled ITL; falls back to the configured values when a
    record carries no server truth (and says how many did)."""
    measured = [r for r in records if not r.get("warmup")]
    ok = [r for r in measured if r.get("ok")]
    ttft_err, itl_err, client_ttft, server_ttft = [], [], [], []
    configured_ttft = configured_itl = mismatched = 0
    for rec in ok:
        truth = rec.get("server_ttft_ms")
        if not isinstance(truth, int | float):
            truth, configured_ttft = ttft_ms, configured_ttft + 1
        client_ttft.append(rec["ttft_ms"])
        server_ttft.append(truth)
        ttft_err.append(rec["ttft_ms"] - truth)
        gaps = (rec.get("server_extra") or {}).get("mock_itl_ms")
        if not isinstance(gaps, list):
            gaps, configured_itl = [itl_ms] * len(rec["itl_ms"]), configured_itl + 1
        if len(gaps) != len(rec["itl_ms"]):
            mismatched += 1  # chunks and content events do not line up (e.g. --tokens-per-chunk)
            continue
        itl_err.extend(c - s for c, s in zip(rec["itl_ms"], gaps, strict=True))
    itl = dist(itl_err)
    itl["abs_p99"] = round(float(np.percentile(np.abs(itl_err), 99)), 3) if itl_err else None
    return {
        "requests": len(measured),
        "succeeded": len(ok),
        "ttft_error_ms": dist(ttft_err),
        "itl_error_ms": itl,
        "client_ttft_ms": dist(client_ttft),
        "server_ttft_ms": dist(server_ttft),
        "truth": {
            "ttft_from_server": len(ok) - configured_ttft,
            "ttft_from_config": configured_ttft,
            "itl_from_server": len(ok) - configured_itl,
            "itl_from_config": configured_itl,
            "itl_requests_not_aligned": mismatched,
        },
    }


def baseline_run(url: str, work: Path, workers: int, max_tokens: int, repeats: int) -> dict:
    """The fixed CPU of one bench run (start-up, worker spawn, report, exit): median of 1-request runs."""
    runs = [run_bench(url, work / f"{i}", ["--concurrency", "1", "--requests", "1", "--warmup", "0",
                                           "--workers", str(workers), "--max-tokens", str(max_tokens)])
            for i in range(repeats)]
    return sorted(runs, key=lambda run: run["cpu_s"])[len(runs) // 2]


def marginal_cpu_ms(run: dict, baseline: dict, requests: int, baseline_requests: int = 1) -> float | None:
    extra, cpu_s = requests - baseline_requests, run["cpu_s"] - baseline["cpu_s"]
    # Below the baseline: the run was too small to rise above the start-up cost's own noise.
    return round(1000 * cpu_s / extra, 3) if extra > 0 and cpu_s > 0 else None


def accuracy_levels(args, workers: int, work: Path) -> list[dict]:
    out = []
    with MockServer(args.ttft_ms, args.itl_ms, args.server_processes, args.jitter_ms) as mock:
        baseline = baseline_run(mock.url, work / f"acc-w{workers}-base", workers, args.max_tokens,
                                args.baseline_runs)
        for concurrency in args.levels:
            run_dir = work / f"acc-w{workers}-c{concurrency}"
            run = run_bench(mock.url, run_dir, ["--concurrency", str(concurrency), "--requests",
                                                str(args.requests), "--workers", str(workers),
                                                "--max-tokens", str(args.max_tokens)])
            summary, records = read_run(run_dir)
            level = summary["levels"][0]
            row = {"workers": workers, "concurrency": concurrency, **accuracy(records, args.ttft_ms, args.itl_ms)}
            sent = level["requests"] + level["warmup_requests"]
            row.update(
                failed=level["failed"],
                errors=level["errors"],
                bench_gateway_share_ttft_ms=level["gateway_share_ttft_ms"],  # bench's own client - server TTFT
                client_lag_ms_p99=level["client_lag_ms"]["p99"],
                loop_cpu_ms_per_request=level["client_cpu_ms_per_request"],
                process_cpu_s=round(run["cpu_s"], 3),
                baseline_cpu_s=round(baseline["cpu_s"], 3),
                cpu_ms_per_request=marginal_cpu_ms(run, baseline, sent),
                peak_rss_mb=run["peak_rss_mb"],
                wall_s=run["wall_s"],
            )
            out.append(row)
            print_accuracy_row(row, flush=True)
    return out


def rate_sweep(args, workers: int, work: Path) -> dict[str, Any]:
    steps, best = [], None
    with MockServer(args.rate_ttft_ms, args.rate_itl_ms, args.server_processes) as mock:
        baseline = baseline_run(mock.url, work / f"rate-w{workers}-base", workers, args.rate_max_tokens,
                                args.baseline_runs)
        for rate in args.rates:
            requests = max(50, round(rate * args.rate_seconds))
            run_dir = work / f"rate-w{workers}-r{rate:g}"
            run = run_bench(mock.url, run_dir, ["--rate", f"{rate:g}", "--arrival", "constant", "--concurrency",
                                                str(args.rate_cap), "--requests", str(requests), "--workers",
                                                str(workers), "--max-tokens", str(args.rate_max_tokens)])
            summary, records = read_run(run_dir)
            level = summary["levels"][0]
            starts = sorted(r["start_s"] for r in records if not r.get("warmup"))
            sent_rps = (len(starts) - 1) / (starts[-1] - starts[0]) if len(starts) > 1 and starts[-1] > starts[0] else None
            achieved = level["request_throughput_rps"]
            lag_p99 = level["client_lag_ms"]["p99"]
            reasons = []
            if achieved < 0.95 * rate:
                reasons.append(f"achieved {achieved:.0f} < 95% of {rate:g}")
            if level["failed"]:
                reasons.append(f"{level['failed']} failed")
            if lag_p99 is None or lag_p99 > args.max_lag_ms:
                reasons.append(f"lag p99 {lag_p99} ms > {args.max_lag_ms:g}")
            sent = level["requests"] + level["warmup_requests"]
            step = {
                "offered_rps": rate,
                "requests": level["requests"],
                "achieved_rps": achieved,
                "sent_rps": round(sent_rps, 2) if sent_rps else None,
                "failed": level["failed"],
                "client_lag_ms": level["client_lag_ms"],
                "ttft_ms_p50": level["ttft_ms"]["p50"],
                "server_ttft_ms_p50": (level["server_ttft_ms"] or {}).get("p50"),
                "loop_cpu_ms_per_request": level["client_cpu_ms_per_request"],
                "cpu_ms_per_request": marginal_cpu_ms(run, baseline, sent),
                "peak_rss_mb": run["peak_rss_mb"],
                "sustained": not reasons,
                "why_not": reasons,
            }
            steps.append(step)
            print(f"  workers {workers} rate {rate:>6g}/s: achieved {achieved:8.1f}/s (sent {step['sent_rps']}/s), "
                  f"lag p50/p99 {level['client_lag_ms']['p50']}/{lag_p99} ms, CPU {_f(step['cpu_ms_per_request'])} "
                  f"ms/req (loop {step['loop_cpu_ms_per_request']}) -> "
                  f"{'ok' if not reasons else 'NOT sustained: ' + '; '.join(reasons)}", flush=True)
            if reasons:
                break  # the steps rise: the first one missed ends the sweep
            best = rate
    return {"workers": workers, "highest_sustained_rps": best, "steps": steps}


def memory_run(args, work: Path) -> dict[str, Any]:
    run_dir = work / "memory"
    with MockServer(args.rate_ttft_ms, args.rate_itl_ms, args.server_processes) as mock:
        run = run_bench(mock.url, run_dir, ["--concurrency", str(args.memory_concurrency), "--duration",
                                            f"{args.memory_duration:g}s", "--workers", str(args.memory_workers),
                                            "--max-tokens", str(args.rate_max_tokens)], sample_s=0.5)
    summary = json.loads((run_dir / "summary.json").read_text())
    level = summary["levels"][0]
    lines = sum(1 for _ in open(run_dir / "requests.jsonl", "rb"))
    total_bytes = (run_dir / "requests.jsonl").stat().st_size or 1
    # The level's window: from the first record written to the last sample in which more arrived.
    # Only samples taken while the workers were alive: after the last level they exit, and a tree that
    # lost its workers says nothing about growth.
    samples = [s for s in run["samples"] if s["jsonl_bytes"] > 0 and s.get("worker_rss_kb", 0) > 0]
    while len(samples) > 2 and samples[-1]["jsonl_bytes"] == samples[-2]["jsonl_bytes"]:
        samples.pop()
    if len(samples) < 3:
        return {"error": "too few RSS samples; raise --memory-duration", "samples": run["samples"]}

    def at(fraction: float) -> dict:
        s = samples[min(len(samples) - 1, round(fraction * (len(samples) - 1)))]
        return {"t_s": s["t_s"], "requests_so_far": round(s["jsonl_bytes"] * lines / total_bytes),
                "parent_rss_mb": round(s.get("parent_rss_kb", 0) / 1024, 1),
                "workers_rss_mb": round(s.get("worker_rss_kb", 0) / 1024, 1),
                "tree_rss_mb": round(sum(v for k, v in s.items() if k.endswith("_rss_kb")) / 1024, 1)}

    start, middle, end = at(0.1), at(0.5), at(1.0)
    growth_mb = end["tree_rss_mb"] - middle["tree_rss_mb"]
    requests = end["requests_so_far"] - middle["requests_so_far"]
    per_request = round(growth_mb * 1024 * 1024 / requests, 1) if requests > 0 else None
    # bench keeps up to 100,000 exact values per metric (8 B each) before folding them into a histogram:
    # tens of bytes per request, by design. A leak of records would be hundreds of bytes or more.
    flat = growth_mb <= 4 or (per_request is not None and per_request < 200)
    return {
        "workers": args.memory_workers,
        "concurrency": args.memory_concurrency,
        "duration_s": args.memory_duration,
        "requests": level["requests"],
        "achieved_rps": level["request_throughput_rps"],
        "start": start, "middle": middle, "end": end,
        "second_half_growth_mb": round(growth_mb, 1),
        "second_half_bytes_per_request": per_request,
        "flat": flat,
        "peak_rss_mb": run["peak_rss_mb"],
        "samples": run["samples"],
    }


def print_accuracy_row(row: dict, flush: bool = False) -> None:
    t, i = row["ttft_error_ms"], row["itl_error_ms"]
    goal = ""
    if row["concurrency"] == GOAL_CONCURRENCY and t["p50"] is not None:
        met = t["p50"] < GOAL_P50_MS and t["p99"] < GOAL_P99_MS
        goal = f"  goal (p50 < {GOAL_P50_MS:g}, p99 < {GOAL_P99_MS:g}) {'met' if met else 'NOT met'}"
    print(f"  {row['workers']:>2} {row['concurrency']:>5} {row['succeeded']:>5}/{row['requests']:<5} "
          f"{_f(t['p50']):>8} {_f(t['p99']):>8} {_f(i['p50']):>8} {_f(i['p99']):>8} {_f(i['abs_p99']):>8} "
          f"{_f(row['server_ttft_ms']['p50']):>9} {_f(row['client_lag_ms_p99']):>8} "
          f"{_f(row['cpu_ms_per_request']):>8} {_f(row['loop_cpu_ms_per_request']):>8} "
          f"{row['peak_rss_mb']:>7.1f}{goal}", flush=flush)


def _f(value, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def float_list(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", type=int_list, default=[8, 32, 128], help="concurrency levels (default 8,32,128)")
    parser.add_argument("--requests", type=int, default=500, help="measured requests per level (default 500)")
    parser.add_argument("--workers", type=int_list, default=[1, 2],
                        help="bench --workers values, each run through the levels and the rate sweep (default 1,2)")
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens per reply, accuracy levels (default 64)")
    parser.add_argument("--ttft-ms", type=float, default=50.0, help="mock TTFT, accuracy levels (default 50)")
    parser.add_argument("--itl-ms", type=float, default=10.0, help="mock ITL, accuracy levels (default 10)")
    parser.add_argument("--jitter-ms", type=float, default=0.0,
                        help="stdev of mock TTFT and ITL jitter, accuracy levels (default 0: every stream in "
                             "step, so a closed loop's slots finish and resend together)")
    parser.add_argument("--rates", type=float_list, default=[100, 200, 400, 800, 1600],
                        help="open-loop steps in req/s, rising (default 100,200,400,800,1600)")
    parser.add_argument("--rate-seconds", type=float, default=5.0, help="seconds of arrivals per step (default 5)")
    parser.add_argument("--rate-cap", type=int, default=256, help="in-flight cap during the sweep (default 256)")
    parser.add_argument("--rate-max-tokens", type=int, default=8, help="tokens per reply, sweep and memory (default 8)")
    parser.add_argument("--rate-ttft-ms", type=float, default=1.0, help="mock TTFT, sweep and memory (default 1)")
    parser.add_argument("--rate-itl-ms", type=float, default=1.0, help="mock ITL, sweep and memory (default 1)")
    parser.add_argument("--max-lag-ms", type=float, default=10.0, help="client lag p99 a sustained step may have")
    parser.add_argument("--memory-duration", type=float, default=120.0,
                        help="seconds of the long closed-loop run for memory (default 120; 0 skips it)")
    parser.add_argument("--memory-concurrency", type=int, default=32)
    parser.add_argument("--memory-workers", type=int, default=1)
    parser.add_argument("--server-processes", type=int, default=1, help="mock server processes (default 1)")
    parser.add_argument("--baseline-runs", type=int, default=3,
                        help="1-request runs whose median CPU is the fixed cost subtracted (default 3)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: 40 requests per level, rates 50,100 for 1 s, memory 6 s (unless given)")
    parser.add_argument("--keep", type=Path, default=None, help="keep every bench results directory here")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    if args.quick:  # small numbers, for whatever was not given explicitly
        quick = {"requests": 40, "rates": [50, 100], "rate_seconds": 1.0, "baseline_runs": 1, "memory_duration": 6.0}
        for name, value in quick.items():
            if getattr(args, name) == parser.get_default(name):
                setattr(args, name, value)

    results: dict[str, Any] = {"load_average_before": os.getloadavg(), "cpus": os.cpu_count(),
                               "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
    with tempfile.TemporaryDirectory(prefix="client-accuracy-") as tmp:
        work = args.keep or Path(tmp)
        print(f"accuracy: mock TTFT {args.ttft_ms:g} ms, ITL {args.itl_ms:g} ms, {args.max_tokens} tokens, "
              f"{args.requests} requests per level; errors = client - server truth, ms", flush=True)
        print(f"  {'w':>2} {'conc':>5} {'ok/all':>11} {'TTFTe50':>8} {'TTFTe99':>8} {'ITLe50':>8} {'ITLe99':>8} "
              f"{'|ITLe|99':>8} {'srvTTFT50':>9} {'lag99':>8} {'cpu/req':>8} {'loop/req':>8} {'RSS MB':>7}")
        results["accuracy"] = [row for workers in args.workers for row in accuracy_levels(args, workers, work)]
        print("  cpu/req: the whole bench process tree (os.wait4), less the median 1-request run, per request "
              "sent (warmup included; noisy for small runs, '-' when under the noise); loop/req: the workers' event "
              "loops alone, as bench reports it")
        borrowed = sum(row["truth"]["ttft_from_config"] + row["truth"]["itl_from_config"] for row in results["accuracy"])
        if borrowed:
            print(f"  NOTE: {borrowed} request(s) carried no server truth: judged against the configured TTFT/ITL")
        print(f"highest sustained rate: constant arrivals, mock TTFT {args.rate_ttft_ms:g} ms, "
              f"ITL {args.rate_itl_ms:g} ms, {args.rate_max_tokens} tokens, {args.rate_seconds:g} s per step", flush=True)
        results["rate"] = [rate_sweep(args, workers, work) for workers in args.workers]
        for sweep in results["rate"]:
            print(f"  workers {sweep['workers']}: highest sustained {sweep['highest_sustained_rps']} req/s")
        if args.memory_duration > 0:
            print(f"memory: {args.memory_duration:g} s closed loop at concurrency {args.memory_concurrency}, "
                  f"workers {args.memory_workers}", flush=True)
            mem = results["memory"] = memory_run(args, work)
            if "error" in mem:
                print("  " + mem["error"])
            else:
                for name in ("start", "middle", "end"):
                    p = mem[name]
                    print(f"  {name:<6} t={p['t_s']:>6.1f} s, ~{p['requests_so_far']:>7} requests: tree RSS "
                          f"{p['tree_rss_mb']:.1f} MB (parent {p['parent_rss_mb']:.1f}, workers {p['workers_rss_mb']:.1f})")
                print(f"  second half: {mem['second_half_growth_mb']:+.1f} MB, "
                      f"{mem['second_half_bytes_per_request']} B/request ({mem['requests']} requests in all at "
                      f"{mem['achieved_rps']:.0f} req/s) -> {'flat' if mem['flat'] else 'GROWING'}")
    goal = [row for row in results["accuracy"] if row["concurrency"] == GOAL_CONCURRENCY]
    for row in goal:
        t = row["ttft_error_ms"]
        met = t["p50"] is not None and t["p50"] < GOAL_P50_MS and t["p99"] < GOAL_P99_MS
        print(f"goal at concurrency {GOAL_CONCURRENCY}, workers {row['workers']}: TTFT error p50 {t['p50']} ms "
              f"(< {GOAL_P50_MS:g}), p99 {t['p99']} ms (< {GOAL_P99_MS:g}) -> {'met' if met else 'NOT met'}")
    results["load_average_after"] = os.getloadavg()
    print("load average before/after:", results["load_average_before"], results["load_average_after"])
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
