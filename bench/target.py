"""Where to send requests: the endpoint URL, the API key, the price, the model.

Sources, highest first: flags; the Pulumi stack's outputs (`--stack NAME` runs
`pulumi stack output --json --show-secrets -s NAME` and reads `url`, `apiKey`, `pricePerHour`);
the environment (BENCH_API_KEY, then OPENAI_API_KEY); the catalog (`--instance`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from urllib.parse import urlsplit

from bench.config import UsageError

CHAT_PATH = "/chat/completions"
STACK_TIMEOUT_S = 120


def endpoints(url: str) -> tuple[str, str]:
    """(base URL, chat-completions URL) from an OpenAI base URL (`.../v1`) or a full endpoint URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UsageError(f"URL {url!r} is not an http(s) URL; give the OpenAI base URL, e.g. https://host/v1")
    url = url.rstrip("/")
    if url.endswith(CHAT_PATH):
        return url[: -len(CHAT_PATH)], url
    return url, url + CHAT_PATH


def stack_outputs(stack: str, cwd: str | None = None) -> dict:
    """The stack's outputs (secrets in clear: they only live in this process)."""
    exe = shutil.which("pulumi")
    if exe is None:
        raise UsageError(f"--stack {stack}: the pulumi CLI is not on PATH; install it or pass the URL and --api-key")
    cmd = [exe, "stack", "output", "--json", "--show-secrets", "-s", stack]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=STACK_TIMEOUT_S, cwd=cwd)
    except subprocess.TimeoutExpired:
        raise UsageError(f"--stack {stack}: `pulumi stack output` took over {STACK_TIMEOUT_S}s") from None
    if proc.returncode != 0:
        why = (proc.stderr or proc.stdout).strip().splitlines()
        raise UsageError(f"--stack {stack}: `pulumi stack output` failed: {why[-1] if why else proc.returncode}")
    try:
        outputs = json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise UsageError(f"--stack {stack}: `pulumi stack output --json` did not print JSON") from None
    if not isinstance(outputs, dict):
        raise UsageError(f"--stack {stack}: expected a JSON object of outputs")
    return outputs


def from_stack(stack: str, cwd: str | None = None) -> dict:
    """{url, api_key, price_per_hour} from the stack; url is required."""
    outputs = stack_outputs(stack, cwd)
    url = outputs.get("url")
    if not isinstance(url, str) or not url:
        raise UsageError(
            f"--stack {stack}: the stack has no `url` output (outputs: {', '.join(sorted(outputs)) or 'none'}); "
            "run `pulumi up` first or pass the URL"
        )
    price = outputs.get("pricePerHour")
    if price is not None:
        try:
            price = float(price)
        except (TypeError, ValueError):
            raise UsageError(f"--stack {stack}: output pricePerHour={price!r} is not a number") from None
    api_key = outputs.get("apiKey")
    capacity = outputs.get("capacity")  # what bench.capacity polls during a --profile run
    from bench.level_capacity import spec_from_outputs

    return {"url": url, "api_key": api_key if isinstance(api_key, str) and api_key else None, "price_per_hour": price,
            "capacity": capacity if isinstance(capacity, dict) else None,
            "level_capacity": spec_from_outputs(outputs)}


def api_key_from_env() -> str | None:
    return os.environ.get("BENCH_API_KEY") or os.environ.get("OPENAI_API_KEY") or None


def lambda_region(url: str) -> str | None:
    """The region of a Lambda Function URL (https://ID.lambda-url.REGION.on.aws/)."""
    m = re.search(r"\.lambda-url\.([a-z0-9-]+)\.on\.aws", url)
    return m.group(1) if m else None


def discover_model(base_url: str, headers: dict, timeout_s: float = 15.0) -> str:
    """The first model the server lists at GET {base}/models."""
    import httpx

    url = base_url + "/models"
    hint = "; pass --model"
    # No answer or a 5xx: the endpoint is not serving yet (Azure's `pulumi up` returns before vLLM does).
    not_yet = f"; the endpoint may not be serving yet: `python -m bench wait {base_url}` waits until it does"
    try:
        resp = httpx.get(url, headers=headers, timeout=timeout_s, trust_env=False)
    except httpx.HTTPError as exc:
        raise UsageError(f"could not list models at {url} ({type(exc).__name__}: {exc}){not_yet}") from None
    if resp.status_code != 200:
        why = not_yet if resp.status_code >= 500 else hint
        raise UsageError(f"could not list models at {url} (HTTP {resp.status_code}){why}")
    try:
        data = resp.json()["data"]
        return str(data[0]["id"])
    except (ValueError, KeyError, IndexError, TypeError):
        raise UsageError(f"{url} did not return an OpenAI model list{hint}") from None


SERVER_PROBE_TIMEOUT_S = 5.0


def server_identity(base_url: str, api_key: str | None = None) -> dict | None:
    """What the server says it is, from its own answer: vLLM's `GET /version` ({"version": ...}) or llama.cpp's
    `GET /props` ({"build_info": "b<N>-<commit>"}), both at the server's root (the base URL less `/v1`).
    None when neither answers (a gateway or a front that serves only `/v1/*`): unknown, never guessed."""
    import httpx

    root = base_url.rstrip("/").removesuffix("/v1")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        with httpx.Client(timeout=SERVER_PROBE_TIMEOUT_S, trust_env=False, headers=headers) as client:
            answer = _json_or_none(client, f"{root}/version")
            if isinstance(answer, dict) and isinstance(answer.get("version"), str):
                return {"engine": "vllm", "version": answer["version"]}
            answer = _json_or_none(client, f"{root}/props")
            if isinstance(answer, dict) and isinstance(answer.get("build_info"), str):
                return {"engine": "llama.cpp", "version": answer["build_info"]}
    except httpx.HTTPError:
        return None
    return None


def _json_or_none(client, url: str):
    response = client.get(url)
    if response.status_code != 200:
        return None
    try:
        return response.json()
    except ValueError:
        return None
