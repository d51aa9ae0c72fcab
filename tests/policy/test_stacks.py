"""Every stack's real graph passes every rule, or carries a named, justified exception (policy.waivers).

Each stack runs its real program on its real Pulumi.<stack>.yaml under the mocks of
tests/pulumi_harness.py, in the variants that change the graph: the AWS gateway with its Function URL
(gatewayMode both, the app checking the key) and with AWS_IAM auth, and every cloud with its cost
budget on (and with its secrets set). The resource checks see each resource's inputs (what `pulumi
preview` shows the pack), the graph checks its state.

Also here: every waiver still silences a violation of some graph (a stale one fails), the secrets of
each stack reach no resource input Pulumi does not hold as a secret (the value-based half of
no-clear-text-secrets), and the budgets appear only when budgetMonthlyUsd is set.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from functools import cache
from typing import Any

import pytest

from policy import WAIVERS, Node, Violation, Waiver, check_graph
from policy._access import APP_KEY_CHECK_VARIABLE
from tests.pulumi_harness import (
    DUMMY_SECRET,
    Secret,
    StackRun,
    refused_stack,
    run_stack,
)
from tests.ssh_keys import ed25519_public_key

SSH_KEY = ed25519_public_key("admin@example")
BILLING_ACCOUNT = "0123AB-4567CD-89EF01"
BUDGET = {"budgetMonthlyUsd": 1500, "budgetAlertEmail": "finops@example.com, oncall@example.com"}
EMAILS = ["finops@example.com", "oncall@example.com"]

# label -> (stack, config overrides)
GRAPHS: dict[str, tuple[str, dict[str, Any]]] = {
    "aws": ("aws", {}),
    "aws-function-url": ("aws", {"gatewayMode": "both"}),
    "aws-function-url-iam": ("aws", {"gatewayMode": "function_url", "gatewayFunctionUrlAuth": "AWS_IAM",
                                     "wafRateLimitPerIp": 0}),  # WAF needs the REST API stage
    "aws-budget": ("aws", {**BUDGET, "hfToken": Secret(DUMMY_SECRET)}),
    "aws-demo-ui": ("aws", {"demoUi": True}),
    "aws-vpc": ("aws", {"sagemakerVpc": True}),  # the private network: VPC, subnets, NAT, endpoints  # the playground: S3 + CloudFront, CORS on the gateway
    "gcp": ("gcp", {}),
    "gcp-budget": ("gcp", {**BUDGET, "gcpBillingAccount": BILLING_ACCOUNT, "hfToken": Secret(DUMMY_SECRET)}),
    "azure": ("azure", {"sshPublicKey": SSH_KEY}),
    "azure-budget": ("azure", {"sshPublicKey": SSH_KEY, **BUDGET, "apiKey": Secret(DUMMY_SECRET),
                               "hfToken": Secret(DUMMY_SECRET)}),
}
DEFAULT_GRAPHS = ("aws", "gcp", "azure")
BUDGET_GRAPHS = {"aws": "aws-budget", "gcp": "gcp-budget", "azure": "azure-budget"}


@cache
def stack_run(label: str) -> StackRun:
    stack, overrides = GRAPHS[label]
    return run_stack(stack, overrides)


def nodes_of(run: StackRun) -> list[Node]:
    return [Node(r.type, r.name, r.state or r.inputs, r.urn) for r in run.resources]


def violations(run: StackRun, *, nodes: Sequence[Node] | None = None, waivers: Iterable[Waiver] = WAIVERS) -> list[Violation]:
    return check_graph(nodes if nodes is not None else nodes_of(run), {r.urn: r.inputs for r in run.resources},
                       waivers=waivers)


def stale_waivers(waivers: Iterable[Waiver], graphs: Iterable[tuple[Sequence[Node], Mapping[str, Any]]]) -> list[Waiver]:
    """The waivers that silence no violation of any of the graphs (nodes, urn -> inputs)."""
    silenced: set[Waiver] = set()
    waivers = tuple(waivers)
    for nodes, inputs in graphs:
        for violation in check_graph(nodes, inputs, waivers=()):
            silenced.update(w for w in waivers if w.covers(violation.rule, violation.type, violation.name))
    return [w for w in waivers if w not in silenced]


# --- every rule on every graph ----------------------------------------------------------------------


@pytest.mark.parametrize("label", list(GRAPHS))
def test_stack_graph_passes_every_rule(label):
    run = stack_run(label)
    assert run.resources
    found = violations(run)
    assert found == [], "\n".join(str(v) for v in found)


def test_every_waiver_still_silences_a_violation():
    graphs = [(nodes_of(stack_run(label)), {r.urn: r.inputs for r in stack_run(label).resources}) for label in GRAPHS]
    stale = stale_waivers(WAIVERS, graphs)
    assert stale == [], f"waivers whose reason is gone (remove them from policy/waivers.py): {stale}"


def test_a_waiver_that_silences_nothing_is_stale():
    untagged = Node("aws:cloudwatch/logGroup:LogGroup", "logs", {"name": "/x", "retentionInDays": 30})
    graph = ([untagged], {})
    needed = Waiver("required-tags", "aws:cloudwatch/logGroup:LogGroup", "logs", "test: a resource the rule flags")
    on_nothing = Waiver("required-tags", "aws:ec2/instance:Instance", "*", "test: no such resource")
    on_a_passing_rule = Waiver("log-retention", "aws:cloudwatch/logGroup:LogGroup", "logs", "test: the rule passes here")
    assert stale_waivers([needed, on_nothing, on_a_passing_rule], [graph]) == [on_nothing, on_a_passing_rule]
    assert check_graph(*graph, waivers=[needed]) == []


# --- what the rules accept, they accept for a reason: take the reason away and they fail ------------


def _without_app_key_check(nodes: Sequence[Node]) -> list[Node]:
    changed = []
    for node in nodes:
        variables = (node.props.get("environment") or {}).get("variables") or {}
        if node.type == "aws:lambda/function:Function" and APP_KEY_CHECK_VARIABLE in variables:
            props = copy.deepcopy(dict(node.props))
            del props["environment"]["variables"][APP_KEY_CHECK_VARIABLE]
            node = Node(node.type, node.name, props, node.urn)
        changed.append(node)
    return changed


def test_function_url_with_auth_none_passes_only_because_the_app_checks_the_key():
    run = stack_run("aws-function-url")
    (url,) = run.of_type("aws:lambda/functionUrl:FunctionUrl")
    assert url.inputs["authorizationType"] == "NONE"
    assert violations(run) == []
    found = violations(run, nodes=_without_app_key_check(nodes_of(run)))
    assert [(v.rule, v.type, v.name) for v in found] == [("public-entry-auth", url.type, url.name)]
    assert APP_KEY_CHECK_VARIABLE in found[0].message


def test_function_url_with_iam_auth_needs_no_key_check():
    run = stack_run("aws-function-url-iam")
    assert run.one("aws:lambda/functionUrl:FunctionUrl").inputs["authorizationType"] == "AWS_IAM"
    fn = next(r for r in run.of_type("aws:lambda/function:Function") if r.name == "llm-gateway-fn")
    assert APP_KEY_CHECK_VARIABLE not in fn.inputs["environment"]["variables"]
    assert violations(run) == []


def _without_api_key(nodes: Sequence[Node]) -> list[Node]:
    changed = []
    for node in nodes:
        if node.type == "kubernetes:apps/v1:Deployment":
            props = copy.deepcopy(dict(node.props))
            for container in props["spec"]["template"]["spec"]["containers"]:
                container["env"] = [e for e in container.get("env", []) if "API_KEY" not in e["name"]]
                args = container.get("args", [])
                if "--api-key" in args:
                    index = args.index("--api-key")
                    container["args"] = args[:index] + args[index + 2:]
            node = Node(node.type, node.name, props, node.urn)
        changed.append(node)
    return changed


def test_gcp_load_balancer_open_to_the_internet_passes_only_because_its_pods_require_the_key():
    # The example opens nothing to the Internet (issue 14); a user who does so on purpose is the case here.
    run = run_stack("gcp", {"gkeServiceSourceRanges": ["0.0.0.0/0"]})
    (service,) = [s for s in run.of_type("kubernetes:core/v1:Service") if s.inputs["spec"]["type"] == "LoadBalancer"]
    assert service.inputs["spec"]["loadBalancerSourceRanges"] == ["0.0.0.0/0"]
    assert violations(run) == []
    found = {(v.rule, v.type, v.name): v.message for v in violations(run, nodes=_without_api_key(nodes_of(run)))}
    assert ("public-entry-auth", service.type, service.name) in found
    assert "0.0.0.0/0" in found["public-entry-auth", service.type, service.name]
    assert ("public-entry-auth", "kubernetes:apps/v1:Deployment", "vllm-deployment") in found


# --- secrets reach resources only as Pulumi secrets -------------------------------------------------


def _strings(value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """(path, string) in the harness's secret-path notation: a.b, a[0]."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _strings(item, f"{path}[{index}]")


def _under(path: str, secret_paths: Iterable[str]) -> bool:
    return any(path == p or path.startswith((f"{p}.", f"{p}[")) for p in secret_paths)


def _generated_secrets(run: StackRun) -> set[str]:
    """Values the providers generate as secrets: random passwords, API Gateway keys."""
    values = {r.state.get("result") for r in run.of_type("random:index/randomPassword:RandomPassword")}
    values |= {r.state.get("value") for r in run.of_type("aws:apigateway/apiKey:ApiKey")}
    return {v for v in values if isinstance(v, str) and len(v) >= 16}


@pytest.mark.parametrize("label", ["aws-budget", "aws-function-url", "gcp-budget", "azure-budget"])
def test_secret_values_reach_resources_only_as_pulumi_secrets(label):
    run = stack_run(label)
    secrets = {DUMMY_SECRET} | _generated_secrets(run)
    seen = 0
    for resource in run.resources:
        for path, text in _strings(resource.inputs):
            if any(secret in text for secret in secrets):
                seen += 1
                assert _under(path, resource.secret_paths), (
                    f"{resource.type} {resource.name} holds a secret at {path}, which Pulumi does not hold as a secret"
                )
    assert seen, "the run set secrets; some resource must hold them"
    for name, value in run.outputs.items():
        if name not in run.secret_outputs:
            assert not any(secret in json.dumps(value, default=str) for secret in secrets), name


# --- the cost guard ---------------------------------------------------------------------------------

BUDGET_TYPES = {
    "aws": "aws:budgets/budget:Budget",
    "gcp": "gcp:billing/budget:Budget",
    "azure": "azure-native:consumption:Budget",
}


@pytest.mark.parametrize("cloud", DEFAULT_GRAPHS)
def test_no_budget_by_default(cloud):
    run = stack_run(cloud)
    assert not [r for r in run.resources if r.type == BUDGET_TYPES[cloud] or r.type.startswith("llminfer:cost_budget:")]
    assert "budgetName" not in run.outputs


def test_aws_budget_alerts_at_50_80_100_percent_and_forecast():
    run = stack_run("aws-budget")
    budget = run.one(BUDGET_TYPES["aws"]).inputs
    assert (budget["limitAmount"], budget["limitUnit"], budget["timeUnit"], budget["budgetType"]) == (
        "1500.00", "USD", "MONTHLY", "COST")
    assert [(n["notificationType"], n["threshold"], n["thresholdType"]) for n in budget["notifications"]] == [
        ("ACTUAL", 50, "PERCENTAGE"), ("ACTUAL", 80, "PERCENTAGE"), ("ACTUAL", 100, "PERCENTAGE"),
        ("FORECASTED", 100, "PERCENTAGE")]
    assert all(n["subscriberEmailAddresses"] == EMAILS for n in budget["notifications"])
    assert "costFilters" not in budget  # budgetTagScoped is off: the whole account
    assert budget["tags"]["stack"] == "aws"
    assert run.outputs["budgetName"] == budget["name"] == "llm-inference-aws-cost"


def test_gcp_budget_alerts_at_50_80_100_percent_and_forecast():
    run = stack_run("gcp-budget")
    budget = run.one(BUDGET_TYPES["gcp"]).inputs
    assert budget["billingAccount"] == BILLING_ACCOUNT
    assert budget["amount"]["specifiedAmount"] == {"currencyCode": "USD", "units": "1500", "nanos": 0}
    assert budget["budgetFilter"]["projects"] == ["projects/123456789"]
    assert [(r["thresholdPercent"], r["spendBasis"]) for r in budget["thresholdRules"]] == [
        (0.5, "CURRENT_SPEND"), (0.8, "CURRENT_SPEND"), (1.0, "CURRENT_SPEND"), (1.0, "FORECASTED_SPEND")]
    channels = run.of_type("gcp:monitoring/notificationChannel:NotificationChannel")
    assert sorted(c.inputs["labels"]["email_address"] for c in channels) == EMAILS
    assert len(budget["allUpdatesRule"]["monitoringNotificationChannels"]) == 2
    assert run.outputs["budgetName"] == budget["displayName"] == "llm-inference-gcp-cost"


def test_azure_budget_covers_the_resource_group_and_alerts_at_50_80_100_percent_and_forecast():
    run = stack_run("azure-budget")
    budget = run.one(BUDGET_TYPES["azure"]).inputs
    group = run.one("azure-native:resources:ResourceGroup")
    assert budget["scope"] == group.state["id"]
    assert (budget["amount"], budget["category"], budget["timeGrain"]) == (1500, "Cost", "Monthly")
    notifications = budget["notifications"]
    assert sorted((n["thresholdType"], n["threshold"]) for n in notifications.values()) == [
        ("Actual", 50), ("Actual", 80), ("Actual", 100), ("Forecasted", 100)]
    assert all(n["contactEmails"] == EMAILS and n["enabled"] for n in notifications.values())
    assert run.outputs["budgetName"] == budget["budgetName"] == "llm-inference-azure-cost"


@pytest.mark.parametrize(
    ("cloud", "overrides", "key"),
    [
        ("aws", {"budgetMonthlyUsd": 100}, "llm-inference:budgetAlertEmail"),
        ("gcp", {"budgetMonthlyUsd": 100, "budgetAlertEmail": "ops@example.com"}, "llm-inference:gcpBillingAccount"),
        ("azure", {"sshPublicKey": SSH_KEY, "budgetMonthlyUsd": 100}, "llm-inference:budgetAlertEmail"),
    ],
)
def test_a_bad_budget_setting_fails_before_anything_is_created(cloud, overrides, key):
    # `pulumi up` creates resources as they register: the budget's config is checked before the first.
    err, run = refused_stack(cloud, overrides)
    assert err.key == key
    assert run.resources == []
