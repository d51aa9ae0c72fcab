"""PNG charts of one run (and, for `compare`, of several), drawn with matplotlib's Agg backend."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import orjson


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def level_x(summary: dict) -> tuple[list[float], str]:
    levels = summary["levels"]
    if levels and levels[0]["rate"] is not None:
        return [lv["rate"] for lv in levels], "offered rate (req/s)"
    return [lv["concurrency"] for lv in levels], "concurrency"


def _series(levels: list[dict], metric: str, stat: str) -> list:
    return [(lv[metric] or {}).get(stat) for lv in levels]


def latency_chart(summary: dict, path: Path) -> Path:
    plt = _pyplot()
    x, xlabel = level_x(summary)
    levels = summary["levels"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    panels = (
        ("TTFT (ms)", [("ttft_ms", "p50"), ("ttft_ms", "p95"), ("ttft_ms", "p99")]),
        ("per-token (ms)", [("itl_ms", "p50"), ("itl_ms", "p95"), ("tpot_ms", "p50"), ("tpot_ms", "p95")]),
        ("E2E (ms)", [("e2e_ms", "p50"), ("e2e_ms", "p95"), ("e2e_ms", "p99")]),
    )
    for ax, (title, lines) in zip(axes, panels, strict=True):
        for metric, stat in lines:
            ax.plot(x, _series(levels, metric, stat), marker="o", label=f"{metric.split('_')[0].upper()} {stat}")
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Latency vs load: {summary['target'].get('label') or summary['target']['url']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def throughput_chart(summary: dict, path: Path) -> Path:
    plt = _pyplot()
    x, xlabel = level_x(summary)
    levels = summary["levels"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    ax1.plot(x, [lv["output_throughput_tok_s"] for lv in levels], marker="o")
    ax1.set_title("output tokens/s")
    ax2.plot(x, [lv["request_throughput_rps"] for lv in levels], marker="o", label="requests/s")
    ax2.plot(x, [lv["goodput_rps"] for lv in levels], marker="s", label="goodput (req/s in SLO)")
    ax2.set_title("requests/s")
    ax2.legend(fontsize=8)
    for ax in (ax1, ax2):
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        ax.set_ylim(bottom=0)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def throughput_latency_chart(summary: dict, path: Path) -> Path | None:
    """Output tok/s against TTFT p95 and E2E p95, one point per level, labelled with its load: the knee is where
    more load stops buying tokens/s and starts buying latency. None when no level has a latency."""
    levels = [lv for lv in summary["levels"] if (lv.get("ttft_ms") or {}).get("p95") is not None]
    if not levels:
        return None
    plt = _pyplot()
    x, _ = level_x({"levels": levels})
    unit = "/s" if levels[0]["rate"] is not None else ""
    tok_s = [lv["output_throughput_tok_s"] for lv in levels]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, metric, title in ((axes[0], "ttft_ms", "TTFT p95 (ms)"), (axes[1], "e2e_ms", "E2E p95 (ms)")):
        latency = [lv[metric]["p95"] for lv in levels]
        ax.plot(tok_s, latency, marker="o")
        for load, tx, ly in zip(x, tok_s, latency, strict=True):
            ax.annotate(f"{'c=' if not unit else ''}{load:g}{unit}", (tx, ly), textcoords="offset points",
                        xytext=(4, 4), fontsize=8)
        ax.set_xlabel("output tokens/s")
        ax.set_ylabel(title)
        ax.set_title(f"throughput vs {title.split(' (')[0]}")
        ax.grid(alpha=0.3)
        ax.set_xlim(left=0)
        ax.set_ylim(bottom=0)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def ttft_cdf_chart(summary: dict, requests_path: Path, path: Path) -> Path | None:
    """TTFT CDF per level, from requests.jsonl (successful, measured requests)."""
    per_level: dict[int, list[float]] = defaultdict(list)
    with open(requests_path, "rb") as f:
        for line in f:
            try:
                rec = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue  # a torn last line after a crash
            if rec.get("ok") and not rec.get("warmup"):
                per_level[rec["level"]].append(rec["ttft_ms"])
    if not per_level:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    labels = {i: (f"c={lv['concurrency']}" if lv["rate"] is None else f"{lv['rate']:g}/s") for i, lv in enumerate(summary["levels"])}
    for level, values in sorted(per_level.items()):
        values.sort()
        n = len(values)
        ax.step(values, [(i + 1) / n for i in range(n)], where="post", label=labels.get(level, str(level)))
    ax.set_xlabel("TTFT (ms)")
    ax.set_ylabel("fraction of requests")
    ax.set_title("TTFT CDF per level")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def compare_charts(runs: list[tuple[str, dict]], out: Path) -> list[Path]:
    """Throughput, TTFT/E2E p95, SLO attainment vs load and cost per 1M tokens at peak, one line per run."""
    plt = _pyplot()
    paths = []
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    panels = (
        (axes[0][0], "output tokens/s", lambda lv: lv["output_throughput_tok_s"]),
        (axes[0][1], "TTFT p95 (ms)", lambda lv: lv["ttft_ms"]["p95"]),
        (axes[1][0], "E2E p95 (ms)", lambda lv: lv["e2e_ms"]["p95"]),
        (axes[1][1], "SLO attainment", lambda lv: lv["slo_attainment"]),
    )
    xlabels = set()
    for label, summary in runs:
        x, xlabel = level_x(summary)
        xlabels.add(xlabel)
        for ax, _title, fn in panels:
            ax.plot(x, [fn(lv) for lv in summary["levels"]], marker="o", label=label)
    for ax, title, _fn in panels:
        ax.set_title(title)
        ax.set_xlabel(" / ".join(sorted(xlabels)))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_ylim(bottom=0)
    axes[1][1].set_ylim(0, 1.05)  # a fraction: a flat 100% must not look like a zoomed-in wobble
    fig.tight_layout()
    path = out / "compare_load.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    paths.append(path)

    costs = []
    for label, summary in runs:
        priced = [lv for lv in summary["levels"] if lv.get("cost_per_1k_tokens_usd") is not None]
        if priced:
            best = min(priced, key=lambda lv: lv["cost_per_1k_tokens_usd"])
            costs.append((label, best["cost_per_1k_tokens_usd"] * 1000))
    if costs:
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.bar([c[0] for c in costs], [c[1] for c in costs])
        ax.set_ylabel("USD per 1M output tokens (best level)")
        ax.set_title("Cost per 1M output tokens")
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        path = out / "compare_cost.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def timeline_chart(summary: dict, path: Path) -> Path | None:
    """A --profile run against time: load asked for and sent, latency with the SLO, capacity."""
    rows, auto = summary.get("timeline"), summary.get("autoscaler")
    if not rows or not auto:
        return None
    from bench.profiles import from_public

    plt = _pyplot()
    profile = from_public(summary["config"]["profile"])
    fig, (ax_load, ax_lat, ax_cap) = plt.subplots(3, 1, figsize=(11, 9), sharex=True)
    mids = [r["t_s"] + r["window_s"] / 2 for r in rows]
    # Load: what the profile asks for, and what was sent / produced per window.
    xs = sorted({0.0, profile.duration_s, *[s.start_s for s in profile.segments],
                 *[s.end_s - 1e-6 for s in profile.segments]})
    asked = "concurrency" if profile.closed_loop else "req/s"
    ax_load.plot(xs, [profile.load_at(x) for x in xs], color="black", lw=1.2, label=f"profile ({asked})")
    if not profile.closed_loop:
        ax_load.plot(mids, [r["rps"] for r in rows], marker=".", label="req/s sent")
    ax_load.set_ylabel(asked)
    tok = ax_load.twinx()
    tok.plot(mids, [r["output_tok_s"] for r in rows], color="tab:green", marker=".", label="output tok/s")
    tok.set_ylabel("output tok/s")
    handles = ax_load.get_legend_handles_labels()[0] + tok.get_legend_handles_labels()[0]
    ax_load.legend(handles, [h.get_label() for h in handles], fontsize=8, loc="upper left")
    ax_load.set_title("load")
    # Latency, the SLO and the windows in violation.
    for metric, stat in (("ttft_ms", "p50"), ("ttft_ms", "p95"), ("e2e_ms", "p95")):
        ax_lat.plot(mids, [r[metric][stat] for r in rows], marker=".", label=f"{metric.split('_')[0].upper()} {stat}")
    slo = summary["config"]["slo"]
    for key, style in (("ttft_ms", "--"), ("e2e_ms", ":")):
        if slo.get(key):
            ax_lat.axhline(slo[key], color="red", ls=style, lw=1, label=f"SLO {key.split('_')[0].upper()}")
    for r in rows:
        if r["slo_attainment"] is not None and r["slo_attainment"] < auto["slo_target"]:
            ax_lat.axvspan(r["t_s"], r["t_s"] + r["window_s"], color="red", alpha=0.12, lw=0)
    ax_lat.set_yscale("log")
    ax_lat.set_ylabel("ms")
    ax_lat.set_title(f"latency (shaded: SLO violated, {auto['slo_violation_s']:g} s)")
    ax_lat.legend(fontsize=8, loc="upper left")
    # Capacity as polled.
    samples = auto.get("capacity_samples") or []
    if samples:
        t = [s[0] for s in samples]
        ax_cap.step(t, [s[1] for s in samples], where="post", label="current (ready)")
        ax_cap.step(t, [s[2] for s in samples], where="post", ls="--", label="desired")
        ax_cap.legend(fontsize=8, loc="upper left")
    else:
        ax_cap.text(0.5, 0.5, auto.get("capacity_note") or "capacity not read", ha="center", va="center",
                    transform=ax_cap.transAxes, fontsize=9)
    for event in auto["scale_events"]:
        for ax in (ax_load, ax_lat, ax_cap):
            ax.axvline(event["t_s"], color="grey", lw=0.8, ls=":")
    ax_cap.set_ylabel("instances")
    ax_cap.set_xlabel("time since the start (s)")
    ax_cap.set_title(f"capacity ({auto['capacity_source'] or 'not read'})")
    for ax in (ax_load, ax_lat, ax_cap):
        ax.grid(alpha=0.3)
    fig.suptitle(f"{auto['profile']}: {summary['target'].get('label') or summary['target']['url']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
