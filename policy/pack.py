"""The CrossGuard policies, built from `policy.RULES`: one resource policy per rule, plus one stack
policy per rule that has graph checks. `policy/__main__.py` serves them as the pack.
"""

from __future__ import annotations

from pulumi_policy import (
    EnforcementLevel,
    PolicyConfigSchema,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)

from policy import RULES, WAIVERS, Node, Rule

PACK_NAME = "llm-inference-guardrails"


def _config_schema(rule: Rule) -> PolicyConfigSchema | None:
    if not rule.options:
        return None
    return PolicyConfigSchema(properties={key: dict(option.schema) for key, option in rule.options.items()})


def resource_policy(rule: Rule) -> ResourceValidationPolicy:
    def validate(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
        violations = rule.check_resource(
            args.resource_type, args.name, args.props, waivers=WAIVERS, config=args.get_config(), urn=args.urn
        )
        for violation in violations:
            report_violation(violation.message, None)

    return ResourceValidationPolicy(
        name=rule.name,
        description=rule.description,
        validate=validate,
        config_schema=_config_schema(rule),
        remediation_steps=rule.remediation,
    )


def stack_policy(rule: Rule) -> StackValidationPolicy:
    def validate(args: StackValidationArgs, report_violation: ReportViolation) -> None:
        nodes = [Node(r.resource_type, r.name, r.props, r.urn) for r in args.resources]
        for violation in rule.check_graph(nodes, waivers=WAIVERS):
            report_violation(violation.message, violation.urn or None)

    return StackValidationPolicy(
        name=f"{rule.name}-graph",
        description=f"{rule.description} (checks that need the whole stack)",
        validate=validate,
        remediation_steps=rule.remediation,
    )


def policies() -> list[ResourceValidationPolicy | StackValidationPolicy]:
    built: list[ResourceValidationPolicy | StackValidationPolicy] = []
    for rule in RULES:
        if rule.resource_checks:
            built.append(resource_policy(rule))
        if rule.graph_checks:
            built.append(stack_policy(rule))
    return built


# A violation stops `pulumi up`; an exception belongs in policy/waivers.py, with its reason.
ENFORCEMENT = EnforcementLevel.MANDATORY
