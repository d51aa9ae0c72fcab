"""Typed, validated reading of the stack config.

Defaults live in `Pulumi.yaml` (the CLI applies them; the tests' harness does the same), so the code
only requires keys and checks them. Every problem raises `ConfigError`, which names the full key,
the value, what is wrong and the `pulumi config set` that fixes it.
"""

from __future__ import annotations

import difflib
import ipaddress
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import pulumi

from components import InvalidArgs

PROJECT = "llm-inference"

# What the example stack files hold where the user must put their own values: a project id that is not
# theirs, and the documentation address ranges of RFC 5737 (IPv4) and RFC 3849 (IPv6), which route nowhere.
PLACEHOLDER_VALUES = frozenset({"my-llm-inference-project"})
DOCUMENTATION_RANGES = tuple(
    ipaddress.ip_network(net) for net in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")
)


def documentation_range(value: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    """The documentation range `value` (an address or CIDR) falls in, or None (also for non-addresses)."""
    try:
        net = ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        return None
    return next((doc for doc in DOCUMENTATION_RANGES if net.version == doc.version and net.subnet_of(doc)), None)


class ConfigError(ValueError):
    def __init__(self, key: str, value: Any, problem: str, fix: str = ""):
        self.key = key
        self.value = value
        fix = fix or f"set it with `pulumi config set {key} <value>`"
        super().__init__(f"config {key}={value!r}: {problem}; {fix}")


class StackConfig:
    """The project's config namespace with typed, checked getters."""

    def __init__(self, namespace: str = PROJECT):
        self.namespace = namespace
        self._cfg = pulumi.Config(namespace)

    def key(self, name: str) -> str:
        return f"{self.namespace}:{name}"

    def _raw(self, name: str) -> str:
        value = self._cfg.get(name)
        if value is None:
            raise ConfigError(self.key(name), None, "is missing (Pulumi.yaml declares no default for it)")
        return value

    def _refuse_placeholder(self, name: str, value: str, *, listed: bool = False) -> None:
        if value in PLACEHOLDER_VALUES:
            raise ConfigError(
                self.key(name), value, "is the example's placeholder, not a real value",
                f"set yours with `pulumi config set {self.key(name)} <value>`",
            )
        doc = documentation_range(value)
        if doc is not None:
            path = f"--path '{self.key(name)}[0]'" if listed else self.key(name)
            raise ConfigError(
                self.key(name), value,
                f"is in the documentation range {doc} (the example's placeholder; it reaches nobody)",
                "name your own networks, e.g. your address: "
                f"`pulumi config set {path} \"$(curl -4 -s https://ifconfig.me)/32\"`",
            )

    def text(self, name: str, *, allow_empty: bool = False, choices: Any = None) -> str:
        value = self._raw(name).strip()
        self._refuse_placeholder(name, value)
        if not value and not allow_empty:
            raise ConfigError(self.key(name), value, "must not be empty")
        if choices is not None and value not in choices:
            known = sorted(choices)
            shown = ", ".join(known[:15]) + (f", ... ({len(known)} in all)" if len(known) > 15 else "")
            close = difflib.get_close_matches(value, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(self.key(name), value, f"is not one of: {shown}{hint}")
        return value

    def integer(self, name: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
        raw = self._raw(name)
        try:
            value = int(str(raw).strip())
        except ValueError:
            raise ConfigError(self.key(name), raw, "must be a whole number") from None
        self._bounds(name, value, minimum, maximum)
        return value

    def number(self, name: str, *, minimum: float | None = None, maximum: float | None = None) -> float:
        raw = self._raw(name)
        try:
            value = float(str(raw).strip())
        except ValueError:
            raise ConfigError(self.key(name), raw, "must be a number") from None
        self._bounds(name, value, minimum, maximum)
        return value

    def boolean(self, name: str) -> bool:
        raw = str(self._raw(name)).strip().lower()
        if raw not in ("true", "false"):
            raise ConfigError(self.key(name), raw, "must be true or false")
        return raw == "true"

    def strings(self, name: str) -> list[str]:
        """A list, given as a YAML/JSON array or a comma-separated string."""
        raw = self._cfg.get_object(name) if self._looks_like_json(name) else self._raw(name)
        items = raw if isinstance(raw, list) else str(raw).split(",")
        values = [str(item).strip() for item in items if str(item).strip()]
        for value in values:
            self._refuse_placeholder(name, value, listed=True)
        return values

    def _looks_like_json(self, name: str) -> bool:
        return str(self._raw(name)).lstrip().startswith("[")

    def secret(self, name: str) -> pulumi.Output[str] | None:
        """A secret value, or None when unset. Refuses one stored in clear text."""
        if self._cfg.get(name) is None:
            return None
        if not pulumi.runtime.is_config_secret(self.key(name)):
            raise ConfigError(
                self.key(name),
                "<hidden>",
                "is stored in clear text in the stack file",
                f"remove it and run `pulumi config set --secret {self.key(name)} <value>`",
            )
        return self._cfg.require_secret(name)

    def _bounds(self, name: str, value: float, minimum: float | None, maximum: float | None) -> None:
        if minimum is not None and value < minimum:
            raise ConfigError(self.key(name), value, f"must be at least {minimum}")
        if maximum is not None and value > maximum:
            raise ConfigError(self.key(name), value, f"must be at most {maximum}")


@contextmanager
def config_keys(cfg: StackConfig, fields: Mapping[str, str]) -> Iterator[None]:
    """Turn a component's `InvalidArgs(field)` into a `ConfigError` naming the config key it came from."""
    try:
        yield
    except InvalidArgs as err:
        name = fields.get(err.field)
        if name is None:
            raise
        raise ConfigError(cfg.key(name), "", err.message) from err


def standard_tags(cfg: StackConfig, cloud: str) -> dict[str, str]:
    """Tags (labels on GCP) every taggable resource carries."""
    return {
        "project": PROJECT,
        "stack": pulumi.get_stack(),
        "owner": cfg.text("owner"),
        "cloud": cloud,
        "managed-by": "pulumi",
    }
