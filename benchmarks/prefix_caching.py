"""Prefix caching on the real vLLM engine: the same shared-prefix workload with it on, then off.

One vLLM (the CPU build in .venv-vllm, the local random-weight Llama 3 with the real tokenizer) at a time:
started with `--enable-prefix-caching`, benched with `python -m bench --shared-prefix-tokens N
--prefix-groups G`, stopped; then the same with `--no-enable-prefix-caching`. Every prompt is one of G
system prompts of N tokens plus a unique user message, so with caching on a request only prefills its
own part once its group's prefix is cached. The bench runs as a process of its own (its event loop must
not share a GIL with anything else). Prints TTFT p50/p95 on vs off and writes each run under --out.

    .venv/bin/python benchmarks/prefix_caching.py [--prefix-tokens 1024] [--groups 2] [--requests 24]

Figures on a shared 2-core machine are noisy: the load average is printed with them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
MODEL = "local-llama"


def bench_once(url: str, out: Path, opts: argparse.Namespace) -> dict:
    cmd = [
        sys.executable, "-m", "bench", url, "--model", MODEL, "--shared-prefix-tokens", str(opts.prefix_tokens),
        "--prefix-groups", str(opts.groups), "--prompt-tokens", str(opts.prompt_tokens), "--max-tokens",
        str(opts.max_tokens), "--concurrency", str(opts.concurrency), "--requests", str(opts.requests),
        "--warmup", str(opts.groups), "--workers", "1", "--no-progress", "--no-charts", "--timeout", "600s",
        "--out", str(out),
    ]
    if opts.tokenizer:
        cmd += ["--tokenizer", str(opts.tokenizer)]
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return json.loads((out / "summary.json").read_text())


def run(opts: argparse.Namespace) -> dict:
    from local.vllm_engine import VllmServer

    results = {}
    for name, flag in (("on", "--enable-prefix-caching"), ("off", "--no-enable-prefix-caching")):
        if opts.only not in (None, name):
            continue
        args = ["--model", MODEL, "--max-model-len", str(opts.max_model_len), flag]
        with VllmServer.from_arguments(args, opts.out / "logs" / f"vllm-{name}.log", kv_cache_gib=opts.kv_cache_gib) as server:
            summary = bench_once(server.base_url + "/v1", opts.out / f"caching-{name}", opts)
        level = summary["levels"][0]
        results[name] = {
            "ttft_ms": level["ttft_ms"], "e2e_ms": level["e2e_ms"], "succeeded": level["succeeded"],
            "requests": level["requests"], "prompt_tokens_check": level.get("prompt_tokens_check"),
            "load_average_at_start": summary["client"]["load_average_at_start"], "vllm_argv": args,
        }
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--prefix-tokens", type=int, default=1024)
    p.add_argument("--groups", type=int, default=2)
    p.add_argument("--prompt-tokens", type=int, default=32, help="the unique user message after the prefix")
    p.add_argument("--max-tokens", type=int, default=4)
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--requests", type=int, default=24)
    p.add_argument("--max-model-len", type=int, default=4096)
    p.add_argument("--kv-cache-gib", type=int, default=1)
    p.add_argument("--out", type=Path, default=ROOT / "results" / "prefix-caching")
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument("--only", choices=("on", "off"), help="run one of the two")
    p.add_argument("--tokenizer", help="a tokenizer.json for exact prompt lengths; `model` = the local model's")
    opts = p.parse_args(argv)
    if opts.tokenizer == "model":
        from local.hf_model import ensure_hf_model
        from local.vllm_engine import vllm_python

        opts.tokenizer = ensure_hf_model(vllm_python()) / "tokenizer.json"
    opts.out.mkdir(parents=True, exist_ok=True)
    results = run(opts)
    print(f"vLLM CPU, {opts.groups} shared prefixes of {opts.prefix_tokens} tokens + {opts.prompt_tokens} unique, "
          f"max_tokens {opts.max_tokens}, c={opts.concurrency}, {opts.requests} requests; load {os.getloadavg()}")
    for name, r in results.items():
        t = r["ttft_ms"]
        print(f"prefix caching {name:>3}: TTFT p50 {t['p50']:.1f} ms  p95 {t['p95']:.1f} ms  "
              f"({r['succeeded']}/{r['requests']} ok, server prompt tokens {r['prompt_tokens_check']})")
    if len(results) == 2:
        on, off = results["on"]["ttft_ms"]["p50"], results["off"]["ttft_ms"]["p50"]
        print(f"TTFT p50 off/on: {off / on:.2f}x")
    if opts.json:
        opts.json.write_text(json.dumps({"options": {k: str(v) for k, v in vars(opts).items()}, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
