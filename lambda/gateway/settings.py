"""The gateway's settings, read once from `GATEWAY_*` environment variables and checked.

Every bad value raises `SettingsError` naming the variable, the value and what it must be, so a
misconfigured Lambda fails its first start with a line that says what to fix.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_NAMESPACE = "LLMInference"
# A browser origin: scheme, host, optional port; no path, no wildcard (what a browser sends in `Origin`).
_ORIGIN = re.compile(r"https?://([a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*|\[[0-9a-f:.]+\])(:[0-9]{1,5})?")


class SettingsError(ValueError):
    def __init__(self, variable: str, value: object, problem: str):
        self.variable = variable
        super().__init__(f"{variable}={value!r}: {problem}")


@dataclass(frozen=True)
class Settings:
    endpoint_name: str
    region: str
    model_id: str
    max_model_len: int = 8192
    # On-demand USD/hour of one endpoint instance; 0 leaves the cost metric out.
    price_per_hour: float = 0.0
    metrics_namespace: str = DEFAULT_NAMESPACE
    # Override of the SageMaker runtime URL (the local emulator); None uses the regional endpoint.
    sagemaker_endpoint_url: str | None = None
    # Where the key clients must present comes from, when the app checks it itself (Function URL):
    # a Secrets Manager secret read once at the first request, or (local runs only) the key itself.
    api_key_secret_arn: str | None = None
    api_key: str | None = None
    max_body_bytes: int = 1_048_576
    # Longest wait for the next byte from SageMaker (a long prompt's prefill counts against it).
    read_timeout_seconds: float = 600.0
    connect_timeout_seconds: float = 5.0
    # Told to clients on 429/503 (Retry-After).
    retry_after_seconds: int = 1
    max_pool_connections: int = 128
    # Browser origins allowed to call the API (CORS, preflight included), e.g. the demo UI's CloudFront
    # origin; empty: no CORS headers at all, so browsers on other origins cannot read replies.
    cors_origins: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("endpoint_name", "region", "model_id"):
            if not getattr(self, name).strip():
                raise SettingsError(_VARS[name], getattr(self, name), "must not be empty")
        if self.max_model_len <= 0:
            raise SettingsError(_VARS["max_model_len"], self.max_model_len, "must be a positive number of tokens")
        if self.price_per_hour < 0:
            raise SettingsError(_VARS["price_per_hour"], self.price_per_hour, "must be >= 0 (USD per hour)")
        if self.api_key_secret_arn and self.api_key:
            raise SettingsError(_VARS["api_key"], "<hidden>", f"set either it or {_VARS['api_key_secret_arn']}, not both")
        if self.max_body_bytes < 1024:
            raise SettingsError(_VARS["max_body_bytes"], self.max_body_bytes, "must be at least 1024 bytes")
        for name in ("read_timeout_seconds", "connect_timeout_seconds"):
            if getattr(self, name) <= 0:
                raise SettingsError(_VARS[name], getattr(self, name), "must be a positive number of seconds")
        if self.retry_after_seconds < 0:
            raise SettingsError(_VARS["retry_after_seconds"], self.retry_after_seconds, "must be >= 0")
        if self.max_pool_connections < 1:
            raise SettingsError(_VARS["max_pool_connections"], self.max_pool_connections, "must be >= 1")
        for origin in self.cors_origins:
            if not _ORIGIN.fullmatch(origin):
                raise SettingsError(_VARS["cors_origins"], ",".join(self.cors_origins),
                                    f"{origin!r} is not an origin: scheme://host[:port] in lower case, no path or "
                                    "trailing slash, no wildcard (e.g. https://d111111abcdef8.cloudfront.net)")

    @property
    def checks_api_key(self) -> bool:
        return bool(self.api_key_secret_arn or self.api_key)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ

        def text(name: str, default: str | None = None) -> str | None:
            value = env.get(_VARS[name], "").strip()
            return value or default

        def required(name: str) -> str:
            value = text(name)
            if value is None:
                raise SettingsError(_VARS[name], None, "is not set")
            return value

        def number(name: str, kind: type, default: float) -> float:
            raw = text(name)
            if raw is None:
                return default
            try:
                return kind(raw)
            except ValueError:
                what = "a whole number" if kind is int else "a number"
                raise SettingsError(_VARS[name], raw, f"must be {what}") from None

        region = text("region") or env.get("AWS_REGION", "").strip() or env.get("AWS_DEFAULT_REGION", "").strip()
        if not region:
            raise SettingsError(_VARS["region"], None, "is not set (nor AWS_REGION)")
        return cls(
            endpoint_name=required("endpoint_name"),
            region=region,
            model_id=required("model_id"),
            max_model_len=number("max_model_len", int, 8192),
            price_per_hour=number("price_per_hour", float, 0.0),
            metrics_namespace=text("metrics_namespace", DEFAULT_NAMESPACE),
            sagemaker_endpoint_url=text("sagemaker_endpoint_url"),
            api_key_secret_arn=text("api_key_secret_arn"),
            api_key=text("api_key"),
            max_body_bytes=number("max_body_bytes", int, 1_048_576),
            read_timeout_seconds=number("read_timeout_seconds", float, 600.0),
            connect_timeout_seconds=number("connect_timeout_seconds", float, 5.0),
            retry_after_seconds=number("retry_after_seconds", int, 1),
            max_pool_connections=number("max_pool_connections", int, 128),
            cors_origins=tuple(o.strip() for o in (text("cors_origins") or "").split(",") if o.strip()),
        )

    def environment(self) -> dict[str, str]:
        """The variables that reproduce these settings (for subprocesses and the Lambda's env)."""
        env = {}
        for name, variable in _VARS.items():
            value = getattr(self, name)
            if isinstance(value, tuple):
                if value:
                    env[variable] = ",".join(value)
            elif value is not None:
                env[variable] = str(value)
        return env


# Field -> environment variable; the component sets the same names on the Lambda.
_VARS = {
    "endpoint_name": "GATEWAY_ENDPOINT_NAME",
    "region": "GATEWAY_REGION",
    "model_id": "GATEWAY_MODEL_ID",
    "max_model_len": "GATEWAY_MAX_MODEL_LEN",
    "price_per_hour": "GATEWAY_PRICE_PER_HOUR",
    "metrics_namespace": "GATEWAY_METRICS_NAMESPACE",
    "sagemaker_endpoint_url": "GATEWAY_SAGEMAKER_ENDPOINT_URL",
    "api_key_secret_arn": "GATEWAY_API_KEY_SECRET_ARN",  # pragma: allowlist secret (env var name)
    "api_key": "GATEWAY_API_KEY",  # pragma: allowlist secret (env var name)
    "max_body_bytes": "GATEWAY_MAX_BODY_BYTES",
    "read_timeout_seconds": "GATEWAY_READ_TIMEOUT_SECONDS",
    "connect_timeout_seconds": "GATEWAY_CONNECT_TIMEOUT_SECONDS",
    "retry_after_seconds": "GATEWAY_RETRY_AFTER_SECONDS",
    "max_pool_connections": "GATEWAY_MAX_POOL_CONNECTIONS",
    "cors_origins": "GATEWAY_CORS_ORIGINS",  # comma-separated
}
ENVIRONMENT_VARIABLES = dict(_VARS)
