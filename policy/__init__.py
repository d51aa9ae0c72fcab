"""Guardrails: policy rules over a stack's resources, run by the tests and by the CrossGuard pack.

    from policy import check_resource, check_graph
    check_resource("aws:cloudwatch/logGroup:LogGroup", "logs", {"tags": {...}})  # -> [Violation, ...]

Each rule is plain code over a resource's (type, name, inputs); graph checks see the whole stack for
what one resource cannot show (a Lambda's log group, the pods behind a load balancer, the function
behind a Function URL). Named exceptions live in `policy.waivers.WAIVERS`. `pulumi preview
--policy-pack policy` runs the same rules through `policy/__main__.py`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from policy import _access, _capacity, _encryption, _iam, _logs, _secrets, _tags, _web
from policy._model import Node, Option, Rule, Violation, Waiver
from policy.waivers import WAIVERS

RULES: tuple[Rule, ...] = (
    _iam.RULE,
    _logs.RULE,
    _access.RULE,
    _encryption.RULE,
    _tags.RULE,
    _capacity.RULE,
    _secrets.RULE,
    _web.RULE,
)

__all__ = ["RULES", "WAIVERS", "Node", "Option", "Rule", "Violation", "Waiver", "check_graph", "check_resource", "rule"]


def rule(name: str) -> Rule:
    for candidate in RULES:
        if candidate.name == name:
            return candidate
    raise KeyError(f"no rule {name!r}; rules: {', '.join(r.name for r in RULES)}")


def check_resource(
    type_: str,
    name: str,
    inputs: Mapping[str, Any],
    *,
    rules: Iterable[Rule] = RULES,
    waivers: Iterable[Waiver] = WAIVERS,
    config: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[Violation]:
    """Every rule's resource checks on one resource. `config` maps rule name -> options."""
    waivers = tuple(waivers)
    return [
        violation
        for r in rules
        for violation in r.check_resource(type_, name, inputs, waivers=waivers, config=(config or {}).get(r.name))
    ]


def check_graph(
    resources: Sequence[Node],
    inputs: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    rules: Iterable[Rule] = RULES,
    waivers: Iterable[Waiver] = WAIVERS,
    config: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[Violation]:
    """Every rule on a whole stack: resource checks on each node, then the graph checks.

    `inputs` (urn -> inputs) gives the resource checks what `pulumi preview` would show them; without it
    they run on the nodes' props.
    """
    rules, waivers = tuple(rules), tuple(waivers)
    found: list[Violation] = []
    for node in resources:
        props = (inputs or {}).get(node.urn, node.props)
        for r in rules:
            found += r.check_resource(
                node.type, node.name, props, waivers=waivers, config=(config or {}).get(r.name), urn=node.urn
            )
    for r in rules:
        found += r.check_graph(resources, waivers=waivers)
    return found
