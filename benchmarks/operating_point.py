"""The operating point of a real vLLM: `python -m bench --find-max-concurrency` (or --find-max-rate) against
vLLM's CPU build started as the aws stack's SageMaker Model would start it (local/vllm_engine.py), with
vLLM's own /metrics scraped per probe. Prints the search's answer, its probes and the server's view of each.

    .venv/bin/python benchmarks/operating_point.py [--slo-ttft-ms 1500] [--requests 12] [--max-tokens 16]
        [--kind concurrency|rate] [--search-max 16] [--out DIR]

Needs `make vllm` (.venv-vllm); the CPU engine is slow (a few tokens/s per request), so the default SLO
is loose and the probes are short. The figures describe this machine's CPU, not a GPU.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kind", choices=("concurrency", "rate"), default="concurrency")
    p.add_argument("--slo-ttft-ms", type=float, default=1500)
    p.add_argument("--requests", type=int, default=12)
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--search-max", default="16")
    p.add_argument("--search-precision", default="10%")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)

    from local.deployed import aws_lmi_environment
    from local.vllm_engine import VllmServer
    from stacks.rendered import run_stack

    out = args.out or Path(tempfile.mkdtemp(prefix="operating-point-"))
    engine = VllmServer.from_lmi_environment(aws_lmi_environment(run_stack("aws")), out / "vllm.log")
    with engine.start():
        print(f"vLLM {engine.version()} at {engine.base_url}, serving {engine.served_name}", flush=True)
        cmd = [sys.executable, "-m", "bench", engine.base_url + "/v1", f"--find-max-{args.kind}",
               "--slo-ttft-ms", str(args.slo_ttft_ms), "--requests", str(args.requests),
               "--max-tokens", str(args.max_tokens), "--prompt-tokens", str(args.prompt_tokens),
               "--extra-body", '{"ignore_eos": true}', "--search-max", args.search_max,
               "--search-precision", args.search_precision, "--no-progress", "--out", str(out / "run")]
        print("$ " + " ".join(cmd[1:]), flush=True)
        code = subprocess.run(cmd, cwd=ROOT).returncode
    summary = json.loads((out / "run" / "summary.json").read_text())
    print(f"\nexit {code}; server metrics: {summary.get('server_metrics')}")
    for lv in summary["levels"]:
        m = lv.get("server_metrics") or {}
        pick = {k: m.get(k) for k in ("vllm:num_requests_running", "vllm:num_requests_waiting",
                                       "vllm:kv_cache_usage_perc", "vllm:generation_tokens_total",
                                       "vllm:num_preemptions_total")}
        load = f"c={lv['concurrency']}" if lv["rate"] is None else f"{lv['rate']:g}/s"
        print(f"{load}: TTFT p95 {lv['ttft_ms']['p95']} ms, {lv['output_throughput_tok_s']} tok/s; server {pick}")
    print(json.dumps({k: v for k, v in summary.get("search", {}).items() if k != "probes"}, indent=1))
    print(f"results in {out}")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
