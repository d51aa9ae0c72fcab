"""What a rule sees, what it reports, and how a named exception silences it.

A rule is plain code over a resource's type token, logical name and inputs (camelCase, as Pulumi
records them), so the same functions run on the tests' mock graphs and inside the CrossGuard pack.
Inputs arrive as plain dicts/lists in tests and as read-only proxies in the pack (where touching a
value unknown during preview raises, and the pack reports "can't check during preview"), so the
helpers here accept any Mapping/Sequence and never copy or mutate.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# A resource check yields one message per problem it finds.
ResourceCheck = Callable[..., Iterable[str]]


@dataclass(frozen=True)
class Node:
    """A resource in a stack's graph, as a graph check sees it (props: outputs, or inputs in tests)."""

    type: str
    name: str
    props: Mapping[str, Any]
    urn: str = ""


# A graph check yields (resource, message) for each problem that needs more than one resource to see.
GraphCheck = Callable[[Sequence[Node]], Iterable[tuple[Node, str]]]


@dataclass(frozen=True)
class Violation:
    rule: str
    type: str
    name: str
    message: str
    urn: str = ""

    def __str__(self) -> str:
        return f"[{self.rule}] {self.type} {self.name!r}: {self.message}"


@dataclass(frozen=True)
class Waiver:
    """A named exception: `rule` does not apply to resources of `type` whose name matches `name`.

    `type` and `name` are shell-style patterns (fnmatch). `reason` says why the rule cannot or need not
    hold there; a waiver without one is refused.
    """

    rule: str
    type: str
    name: str
    reason: str

    def __post_init__(self) -> None:
        if not self.reason.strip():
            raise ValueError(f"waiver for rule {self.rule!r} on {self.type} {self.name!r} needs a reason")

    def covers(self, rule: str, type_: str, name: str) -> bool:
        return (
            rule == self.rule
            and fnmatch.fnmatchcase(type_, self.type)
            and fnmatch.fnmatchcase(name, self.name)
        )


@dataclass(frozen=True)
class Option:
    """A rule setting the pack exposes as policy config (`pulumi policy enable --config`)."""

    default: Any
    schema: Mapping[str, Any]


@dataclass(frozen=True)
class Rule:
    name: str
    description: str
    remediation: str
    resource_checks: tuple[ResourceCheck, ...] = ()
    graph_checks: tuple[GraphCheck, ...] = ()
    options: Mapping[str, Option] = field(default_factory=dict)

    def settings(self, config: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The rule's options: defaults, overridden by the given config (unknown keys ignored)."""
        chosen = {key: option.default for key, option in self.options.items()}
        for key, value in (config or {}).items():
            if key in chosen:
                chosen[key] = value
        return chosen

    def check_resource(
        self,
        type_: str,
        name: str,
        inputs: Mapping[str, Any],
        *,
        waivers: Iterable[Waiver] = (),
        config: Mapping[str, Any] | None = None,
        urn: str = "",
    ) -> list[Violation]:
        if any(w.covers(self.name, type_, name) for w in waivers):
            return []
        settings = self.settings(config)
        return [
            Violation(self.name, type_, name, message, urn)
            for check in self.resource_checks
            for message in check(type_, name, inputs, **settings)
        ]

    def check_graph(
        self, nodes: Sequence[Node], *, waivers: Iterable[Waiver] = ()
    ) -> list[Violation]:
        waivers = tuple(waivers)
        found = []
        for check in self.graph_checks:
            for node, message in check(nodes):
                if not any(w.covers(self.name, node.type, node.name) for w in waivers):
                    found.append(Violation(self.name, node.type, node.name, message, node.urn))
        return found


# --- helpers over Pulumi's recorded values -------------------------------------------------------


def is_map(value: Any) -> bool:
    return isinstance(value, Mapping)


def is_list(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str | bytes)


def as_list(value: Any) -> list[Any]:
    """A list for a list, [x] for a single value, [] for None."""
    if value is None:
        return []
    if is_list(value):
        return list(value)
    return [value]


def get(value: Any, *path: str | int, default: Any = None) -> Any:
    """value[path[0]][path[1]]..., or `default` where a step is missing."""
    for step in path:
        if isinstance(step, int):
            if not is_list(value) or not -len(value) <= step < len(value):
                return default
            value = value[step]
        else:
            if not is_map(value) or step not in value:
                return default
            value = value[step]
    return default if value is None else value


def number(value: Any) -> float | None:
    """A number from a recorded value (protobuf numbers arrive as floats, config as strings)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() == "true"
    return value is True


def json_document(value: Any) -> Any:
    """A JSON policy given as a string (what `json.dumps`/get_policy_document give) or as a dict."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return None
    return value


def provider(type_: str) -> str:
    """'aws', 'gcp', 'azure-native', 'kubernetes', ... from a type token."""
    return type_.split(":", 1)[0]


def walk_strings(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], str]]:
    """Every string leaf with its path."""
    if isinstance(value, str):
        yield path, value
    elif is_map(value):
        for key in value:
            yield from walk_strings(value[key], (*path, key))
    elif is_list(value):
        for index, item in enumerate(value):
            yield from walk_strings(item, (*path, index))
