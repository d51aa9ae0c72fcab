"""What one request delivered, measured at the gateway, and its CloudWatch Embedded Metric Format line.

Definitions (the same the bench uses, see REFERENCE.md):
- TTFT: the endpoint call sent -> the first chunk carrying content (the role-only chunk does not count).
- completion tokens: the engine's `usage` (the gateway always asks for it), else content chunks counted.
- tokens/s: completion tokens / seconds from the call sent to the last content chunk (what this one
  stream got; the fleet's throughput is the sum over streams, which CloudWatch adds up).
- cost per 1k tokens: price_per_hour / (tokens/s * 3600) * 1000, i.e. what 1k tokens cost if this
  stream had the instance to itself: an upper bound, since an instance serves many streams at once.

The EMF line costs no API call: CloudWatch Logs extracts the metrics from the function's log.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

# Metric -> CloudWatch unit. The autoscaling policy reads CompletionTokens (Sum per minute).
METRIC_UNITS = {
    "CompletionTokens": "Count",
    "PromptTokens": "Count",
    "TokensPerSecond": "Count/Second",
    "TTFTMs": "Milliseconds",
    "CostPer1kTokensUSD": "None",
}
DIMENSION = "EndpointName"


@dataclass
class StreamMeter:
    """Fed every chunk of one endpoint stream; `started` is when the endpoint call was sent."""

    price_per_hour: float
    started: float = field(default_factory=time.perf_counter)
    first_content: float | None = None
    last_content: float | None = None
    content_chunks: int = 0
    usage: dict[str, Any] | None = None

    def observe(self, chunk: Mapping[str, Any]) -> None:
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.usage = usage
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            if delta.get("content") or delta.get("reasoning_content") or delta.get("tool_calls"):
                now = time.perf_counter()
                if self.first_content is None:
                    self.first_content = now
                self.last_content = now
                self.content_chunks += 1
                return

    @property
    def completion_tokens(self) -> int:
        if self.usage and isinstance(self.usage.get("completion_tokens"), int):
            return self.usage["completion_tokens"]
        return self.content_chunks

    @property
    def tokens_counted_from(self) -> str:
        return "usage" if self.usage and isinstance(self.usage.get("completion_tokens"), int) else "chunks"

    @property
    def prompt_tokens(self) -> int | None:
        value = (self.usage or {}).get("prompt_tokens")
        return value if isinstance(value, int) else None

    @property
    def ttft_ms(self) -> float | None:
        return None if self.first_content is None else (self.first_content - self.started) * 1000

    @property
    def tokens_per_second(self) -> float | None:
        if self.last_content is None or self.completion_tokens <= 0:
            return None
        elapsed = self.last_content - self.started
        return self.completion_tokens / elapsed if elapsed > 0 else None

    @property
    def cost_per_1k_usd(self) -> float | None:
        tps = self.tokens_per_second
        if not tps or self.price_per_hour <= 0:
            return None
        return self.price_per_hour / (tps * 3600) * 1000

    def summary(self) -> dict[str, Any]:
        """The four figures clients see (SSE `: metrics` comment, X-* headers)."""
        return {
            "ttft_ms": _round(self.ttft_ms, 1),
            "tokens_per_second": _round(self.tokens_per_second, 2),
            "cost_per_1k_usd": _round(self.cost_per_1k_usd, 8),
            "completion_tokens": self.completion_tokens,
        }

    def headers(self) -> dict[str, str]:
        figures = self.summary()
        headers = {"X-Completion-Tokens": str(figures["completion_tokens"])}
        for name, key in (("X-TTFT-MS", "ttft_ms"), ("X-Tokens-Per-Second", "tokens_per_second"),
                          ("X-Cost-Per-1K-USD", "cost_per_1k_usd")):
            if figures[key] is not None:
                headers[name] = repr(figures[key])
        return headers

    def sse_comment(self) -> bytes:
        return b": metrics " + json.dumps(self.summary(), separators=(", ", ": ")).encode() + b"\n\n"


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def emf_record(
    *,
    namespace: str,
    endpoint_name: str,
    meter: StreamMeter | None,
    properties: Mapping[str, Any],
    timestamp_ms: int | None = None,
) -> dict[str, Any]:
    """One request's log record. With a meter (the endpoint was called) it is an EMF record carrying the
    metrics that have a value; without one (rejected before the call) a plain JSON record."""
    record: dict[str, Any] = {DIMENSION: endpoint_name, **properties}
    if meter is None:
        return record
    values = {
        "CompletionTokens": meter.completion_tokens,
        "PromptTokens": meter.prompt_tokens,
        "TokensPerSecond": meter.tokens_per_second,
        "TTFTMs": meter.ttft_ms,
        "CostPer1kTokensUSD": meter.cost_per_1k_usd,
    }
    present = {name: value for name, value in values.items() if value is not None}
    record.update(present)
    record["_aws"] = {
        "Timestamp": int(time.time() * 1000) if timestamp_ms is None else timestamp_ms,
        "CloudWatchMetrics": [
            {
                "Namespace": namespace,
                "Dimensions": [[DIMENSION]],
                "Metrics": [{"Name": name, "Unit": METRIC_UNITS[name]} for name in present],
            }
        ],
    }
    return record


def stdout_emitter() -> Callable[[dict[str, Any]], None]:
    """One JSON line per record on stdout: the Lambda's log, where CloudWatch extracts the EMF metrics."""
    import sys

    def emit(record: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(record, separators=(",", ":")) + "\n")
        sys.stdout.flush()

    return emit
