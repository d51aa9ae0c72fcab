"""Validation shared by the components' typed args.

Args are checked at construction, before any child resource exists, so a bad value fails the
preview with a message that names the field; stacks translate the field into the config key.
"""

from __future__ import annotations

import difflib
import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any


class InvalidArgs(ValueError):
    """A component argument that cannot work; `field` names the dataclass field."""

    def __init__(self, component: str, field: str, message: str):
        self.component = component
        self.field = field
        self.message = message
        super().__init__(f"{component}: {field}: {message}")


def require(component: str, field: str, ok: bool, message: str) -> None:
    if not ok:
        raise InvalidArgs(component, field, message)


def require_text(component: str, field: str, value: Any) -> None:
    require(component, field, isinstance(value, str) and value.strip() != "", f"must be a non-empty string, got {value!r}")


def require_positive(component: str, field: str, value: Any) -> None:
    require(
        component,
        field,
        isinstance(value, int | float) and not isinstance(value, bool) and value > 0,
        f"must be a positive number, got {value!r}",
    )


def require_between(component: str, field: str, value: Any, low: float, high: float) -> None:
    require(
        component,
        field,
        isinstance(value, int | float) and not isinstance(value, bool) and low <= value <= high,
        f"must be between {low} and {high}, got {value!r}",
    )


def require_choice(component: str, field: str, value: Any, choices: Iterable[str], hint: str = "") -> None:
    known = sorted(set(choices))
    if value not in known:
        shown = ", ".join(known[:12]) + (f", ... ({len(known)} in all)" if len(known) > 12 else "")
        close = difflib.get_close_matches(str(value), known, n=1)
        guess = f" (did you mean {close[0]!r}?)" if close else ""
        raise InvalidArgs(component, field, f"{value!r} is not one of: {shown}{guess}{hint}")


def require_min_max(component: str, low_field: str, low: int, high_field: str, high: int) -> None:
    require_positive(component, high_field, high)
    require(component, low_field, isinstance(low, int) and low >= 0, f"must be a whole number >= 0, got {low!r}")
    require(component, low_field, low <= high, f"({low}) must not exceed {high_field} ({high})")


def merge_tags(base: Mapping[str, str], extra: Mapping[str, str] | None) -> dict[str, str]:
    tags = dict(base)
    tags.update(extra or {})
    return tags


def require_cidrs(component: str, field: str, values: Any, *, allow_empty: bool = True) -> None:
    """A tuple of IPv4 CIDR blocks with no host bits set (10.0.0.0/8, 203.0.113.7/32)."""
    require(component, field, isinstance(values, tuple), f"must be a tuple of CIDR blocks, got {values!r}")
    require(component, field, allow_empty or len(values) > 0, "must name at least one CIDR block (0.0.0.0/0 allows any)")
    for value in values:
        try:
            ipaddress.IPv4Network(value, strict=True)
        except (ValueError, TypeError) as err:
            raise InvalidArgs(component, field, f"{value!r} is not an IPv4 CIDR block like 203.0.113.0/24 ({err})") from None
