"""`python -m bench wait URL`: wait until a freshly deployed endpoint really serves, then say so.

`pulumi up` can finish before the model serves (Azure: the VM's first boot installs Docker, waits for the GPU
driver, pulls the image and downloads the model; GKE and SageMaker are slow to turn healthy after a
scale-out). Each attempt lists the models (GET {base}/models) and streams a one-token chat completion, so
"ready" means the whole path answers with the key: front, gateway, engine. A connection refused, a timeout,
a 5xx or an empty model list mean "not yet"; a 401/403 that lasts past --auth-grace means the key is wrong
(waiting would not fix it). Exit codes: 0 ready, 1 not ready within --timeout or the key refused, 2 usage.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import orjson

from bench.cli_base import USAGE_EXIT, ArgParser
from bench.config import UsageError

READY, NOT_READY, REFUSED = 0, 1, 1


@dataclass
class Attempt:
    ok: bool
    why: str  # what the endpoint did, e.g. "connect: connection refused", "HTTP 503 from GET /models"
    status: int | None = None
    model: str | None = None
    first_token_ms: float | None = None


def attempt(client: httpx.Client, base_url: str, model: str | None) -> Attempt:
    """One check: the model list, then one streamed token."""
    try:
        listed = client.get(base_url + "/models")
    except httpx.HTTPError as exc:
        return Attempt(False, f"GET /models: {type(exc).__name__}: {exc or 'no answer'}")
    if listed.status_code != 200:
        return Attempt(False, f"HTTP {listed.status_code} from GET /models", listed.status_code)
    try:
        ids = [str(item["id"]) for item in listed.json()["data"]]
    except (ValueError, KeyError, TypeError):
        return Attempt(False, "GET /models did not answer an OpenAI model list", listed.status_code)
    if not ids:
        return Attempt(False, "GET /models lists no model yet", listed.status_code)
    model = model or ids[0]
    body = {"model": model, "messages": [{"role": "user", "content": "Say OK."}], "max_tokens": 1, "stream": True}
    sent = time.perf_counter()
    try:
        with client.stream("POST", base_url + "/chat/completions", json=body) as reply:
            if reply.status_code != 200:
                reply.read()
                return Attempt(False, f"HTTP {reply.status_code} from POST /chat/completions", reply.status_code, model)
            for line in reply.iter_lines():
                if not line.startswith("data:") or line[5:].strip() == "[DONE]":
                    continue
                try:
                    event = orjson.loads(line[5:])
                except orjson.JSONDecodeError:
                    return Attempt(False, f"POST /chat/completions streamed a line that is not JSON: {line[:80]!r}",
                                   200, model)
                if isinstance(event, dict) and event.get("error"):
                    return Attempt(False, f"POST /chat/completions streamed an error: {event['error']}", 200, model)
                if isinstance(event, dict) and any(_token_or_end(choice) for choice in event.get("choices") or ()):
                    return Attempt(True, "ready", 200, model, round((time.perf_counter() - sent) * 1000, 1))
    except httpx.HTTPError as exc:
        return Attempt(False, f"POST /chat/completions: {type(exc).__name__}: {exc or 'no answer'}", None, model)
    return Attempt(False, "POST /chat/completions ended without a streamed choice", 200, model)


def _token_or_end(choice) -> bool:
    """A generated token or a finish: the role-only first chunk some servers send at once does not count."""
    if not isinstance(choice, dict):
        return False
    delta = choice.get("delta") or {}
    return bool(isinstance(delta, dict) and delta.get("content")) or bool(choice.get("finish_reason"))


def wait_ready(
    base_url: str,
    headers: dict,
    *,
    model: str | None = None,
    timeout_s: float = 1800.0,
    interval_s: float = 10.0,
    auth_grace_s: float = 60.0,
    say: Callable[[str], None] = print,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Poll until one attempt succeeds; the exit code. Says one line per attempt that changes the story."""
    started = clock()
    attempts = 0
    refused_since: float | None = None
    last_why = None
    with httpx.Client(headers=headers, timeout=min(60.0, max(5.0, interval_s * 3)), trust_env=False) as client:
        while True:
            attempts += 1
            result = attempt(client, base_url, model)
            waited = clock() - started
            if result.ok:
                say(f"ready after {waited:.0f} s ({attempts} attempt{'s' if attempts > 1 else ''}): model "
                    f"{result.model}, first token in {result.first_token_ms:.0f} ms")
                return READY
            if result.status in (401, 403):
                refused_since = waited if refused_since is None else refused_since
                if waited - refused_since >= auth_grace_s:
                    say(f"the endpoint answers but refuses the key ({result.why}, for {waited - refused_since:.0f} s): "
                        "pass the stack's key, e.g. --api-key \"$(pulumi stack output apiKey --show-secrets -s STACK)\" "
                        "or --stack STACK")
                    return REFUSED
            else:
                refused_since = None
            if result.why != last_why:
                say(f"not ready after {waited:.0f} s: {result.why}")
                last_why = result.why
            if waited + interval_s > timeout_s:
                say(f"not ready within {timeout_s:.0f} s ({attempts} attempts); last: {result.why}. "
                    "See the cloud's troubleshooting section (docs/azure.md, docs/gcp.md, docs/gateway.md)")
                return NOT_READY
            sleep(interval_s)


def parser() -> ArgParser:
    p = ArgParser(
        prog="python -m bench wait",
        description="Wait until an endpoint lists its model and streams a token with the key (exit 0), or give up "
        "after --timeout (exit 1). Use it after `pulumi up`: on Azure it returns before vLLM serves.",
    )
    p.add_argument("url", nargs="?", help="OpenAI base URL (https://host/v1)")
    p.add_argument("--stack", help="read url and apiKey from `pulumi stack output -s NAME`")
    p.add_argument("--stack-cwd", help="directory of the Pulumi project for --stack (default: here)")
    p.add_argument("--api-key", help="API key (default: $BENCH_API_KEY, then $OPENAI_API_KEY)")
    p.add_argument("--model", help="model to ask for a token (default: the first one GET /models lists)")
    p.add_argument("--timeout", default="30m", help="give up after this long (default 30m)")
    p.add_argument("--interval", default="10s", help="time between attempts (default 10s)")
    p.add_argument("--auth-grace", default="60s",
                   help="how long a 401/403 may last before the key counts as wrong (default 60s: new keys propagate)")
    return p


def main(argv: list[str]) -> int:
    from bench import target
    from bench.cli import parse_duration

    p = parser()
    args = p.parse_args(argv)
    try:
        url, api_key = args.url, args.api_key
        if args.stack:
            stack = target.from_stack(args.stack, args.stack_cwd)
            url, api_key = url or stack["url"], api_key or stack["api_key"]
        if not url:
            raise UsageError("no URL: give the endpoint's base URL (https://host/v1) or --stack NAME")
        base_url, _ = target.endpoints(url)
        timeout_s = parse_duration(args.timeout, "--timeout")
        interval_s = parse_duration(args.interval, "--interval")
        auth_grace_s = parse_duration(args.auth_grace, "--auth-grace")
    except UsageError as exc:
        print(f"{p.prog}: error: {exc}", file=sys.stderr)
        return USAGE_EXIT
    api_key = api_key or target.api_key_from_env()
    # The same two headers the bench sends: vLLM reads Bearer, API Gateway in HEADER mode x-api-key.
    headers = {"Authorization": f"Bearer {api_key}", "x-api-key": api_key} if api_key else {}
    print(f"waiting for {base_url} (every {interval_s:g} s, up to {timeout_s:g} s)", flush=True)
    return wait_ready(base_url, headers, model=args.model, timeout_s=timeout_s, interval_s=interval_s,
                      auth_grace_s=auth_grace_s, say=lambda line: print(line, flush=True))
