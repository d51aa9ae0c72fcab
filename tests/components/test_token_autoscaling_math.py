"""The autoscaling and monitoring metric math, evaluated: the expression each component renders, over
instance counts and token volumes, with CloudWatch's semantics for missing datapoints (tests/components/
metric_math.py). Target tracking needs a metric that falls as instances are added and is 0 when idle."""

from __future__ import annotations

import math

import pytest

from components.endpoint_monitoring import error_rate_queries, instance_count_queries
from components.token_autoscaling import TokenAwareAutoscaling, TokenAwareAutoscalingArgs
from tests.components.metric_math import MetricMathError, evaluate, evaluate_queries
from tests.pulumi_harness import run_program

TARGET = 54_000


@pytest.fixture(scope="module")
def rendered_queries() -> list[dict]:
    """The metric queries of the token policy exactly as the component hands them to Pulumi."""

    def program():
        TokenAwareAutoscaling("scaling", TokenAwareAutoscalingArgs(
            endpoint_name="llm-prod", min_instances=1, max_instances=8,
            target_tokens_per_minute_per_instance=TARGET, concurrency_scale_out=False))
        return {}

    run = run_program(program, stack="dev")
    (policy,) = run.of_type("aws:appautoscaling/policy:Policy")
    config = policy.inputs["targetTrackingScalingPolicyConfiguration"]
    assert config["targetValue"] == TARGET
    return config["customizedMetricSpecification"]["metrics"]


def sagemaker_minute(total_tokens: float, requests: int, instances: int) -> dict[str, list[float | None]]:
    """One minute of the metrics the queries read, as CloudWatch has them for a fleet of `instances`:
    Invocations is the fleet's count, InvocationsPerInstance the count normalised by the instance count,
    CompletionTokens the gateway's total. An idle minute has no datapoints at all."""
    if requests == 0:
        return {"CompletionTokens": [None], "Invocations": [None], "InvocationsPerInstance": [None]}
    return {"CompletionTokens": [float(total_tokens)], "Invocations": [float(requests)],
            "InvocationsPerInstance": [requests / instances]}


def tokens_per_instance(queries, total_tokens, requests, instances) -> float | None:
    (value,) = evaluate_queries(queries, sagemaker_minute(total_tokens, requests, instances))
    return value


@pytest.mark.parametrize("total_tokens", [6_000, 54_000, 216_000, 1_000_000])
def test_tokens_per_instance_is_the_fleet_total_divided_by_the_instances(rendered_queries, total_tokens):
    values = [tokens_per_instance(rendered_queries, total_tokens, 300, n) for n in range(1, 9)]
    assert values == pytest.approx([total_tokens / n for n in range(1, 9)])
    assert all(a > b for a, b in zip(values, values[1:], strict=False)), "must fall as instances are added"


def test_the_metric_grows_with_the_load_on_a_fixed_fleet(rendered_queries):
    values = [tokens_per_instance(rendered_queries, tokens, 100, 2) for tokens in (0, 1_000, 50_000, 200_000)]
    assert values == pytest.approx([0, 500, 25_000, 100_000])


def test_an_idle_endpoint_reads_zero_not_a_gap(rendered_queries):
    # No datapoints in the minute: 0 tokens per instance, so the policy can scale in (a gap would not).
    assert tokens_per_instance(rendered_queries, 0, 0, 3) == 0
    # Requests but no token datapoint yet (the gateway's EMF lags): 0, not a gap either.
    data = {"CompletionTokens": [None], "Invocations": [10.0], "InvocationsPerInstance": [5.0]}
    assert evaluate_queries(rendered_queries, data) == [0]
    # SageMaker publishing an explicit 0 for the invocations: no division by zero.
    data = {"CompletionTokens": [0.0], "Invocations": [0.0], "InvocationsPerInstance": [0.0]}
    assert evaluate_queries(rendered_queries, data) == [0]


def test_target_tracking_on_it_converges_instead_of_scaling_out_without_end(rendered_queries):
    # Target tracking asks for ceil(instances * metric / target) instances. On the per-instance metric
    # a load of 3.5 instances' worth settles at 4; a fleet-wide total would ask for more every round.
    load = 3.5 * TARGET
    instances = 1
    for _ in range(6):
        metric = tokens_per_instance(rendered_queries, load, 1_000, instances)
        instances = min(8, math.ceil(instances * metric / TARGET))
    assert instances == 4
    assert tokens_per_instance(rendered_queries, load, 1_000, 4) <= TARGET


def test_a_series_of_minutes_keeps_every_datapoint(rendered_queries):
    # Busy, idle, busy on a grown fleet: one value per minute, none missing.
    data = {"CompletionTokens": [120_000.0, None, 120_000.0], "Invocations": [60.0, None, 60.0],
            "InvocationsPerInstance": [60.0, None, 20.0]}
    assert evaluate_queries(rendered_queries, data) == pytest.approx([120_000, 0, 40_000])


def test_only_the_last_query_returns_data(rendered_queries):
    flags = [q.get("returnData", q.get("return_data")) for q in rendered_queries]
    assert flags == [False, False, False, True]


def test_instances_in_service_and_error_rate_of_the_monitoring_component():
    instances = instance_count_queries("llm-prod", "AllTraffic")
    for n in (1, 2, 5):
        # 3 requests on 5 instances: the per-instance sum is 3 x 0.2 (the float rounding the alarm allows for)
        data = {"Invocations": [3.0], "InvocationsPerInstance": [sum([1 / n] * 3)]}
        assert evaluate_queries(instances, data)[0] == pytest.approx(n)
    errors = error_rate_queries("llm-prod", "AllTraffic")
    assert evaluate_queries(errors, {"Invocation5XXErrors": [5.0], "Invocations": [200.0]}) == [2.5]
    assert evaluate_queries(errors, {"Invocation5XXErrors": [None], "Invocations": [200.0]}) == [0]
    # Idle: 0 %, not a gap and not a division by zero.
    assert evaluate_queries(errors, {"Invocation5XXErrors": [None], "Invocations": [None]}) == [0]


# ------------------------------------------------------------------ the evaluator itself, on literals


@pytest.mark.parametrize(
    ("expression", "series", "expected"),
    [
        ("a + b * 2", {"a": [1.0], "b": [3.0]}, [7.0]),
        ("(a + b) * 2", {"a": [1.0], "b": [3.0]}, [8.0]),
        ("a - b - 1", {"a": [10.0], "b": [3.0]}, [6.0]),
        ("a / b", {"a": [1.0, 1.0], "b": [0.0, 4.0]}, [None, 0.25]),  # division by zero: no datapoint
        ("a + b", {"a": [1.0, None], "b": [2.0, 2.0]}, [3.0, None]),  # a missing operand: no datapoint
        ("FILL(a, 0) + b", {"a": [1.0, None], "b": [2.0, 2.0]}, [3.0, 2.0]),
        ("a > 1", {"a": [0.5, 1.0, 2.0]}, [0.0, 0.0, 1.0]),
        ("a >= 1", {"a": [0.5, 1.0, 2.0]}, [0.0, 1.0, 1.0]),
        ("IF(a > 1, 10, 20)", {"a": [0.5, 2.0, None]}, [20.0, 10.0, None]),
        ("IF(a, b)", {"a": [0.0, 1.0], "b": [5.0, 6.0]}, [None, 6.0]),  # no falseValue: dropped
        ("IF(a > 0 AND b > 0, 1, 0)", {"a": [1.0, 1.0], "b": [0.0, 2.0]}, [0.0, 1.0]),
        ("-a * 2", {"a": [3.0]}, [-6.0]),
    ],
)
def test_evaluator_semantics(expression, series, expected):
    assert evaluate(expression, series) == expected


@pytest.mark.parametrize("expression", ["RATE(a)", "a +", "a ) (", "unknown_id * 2", "IF(a)", "FILL(a)"])
def test_evaluator_refuses_what_it_does_not_model(expression):
    with pytest.raises(MetricMathError):
        evaluate(expression, {"a": [1.0]})


# ------------------------------------------------------------------ the rest of what the component renders


def test_the_whole_scaling_graph_with_every_input():
    def program():
        TokenAwareAutoscaling("s", TokenAwareAutoscalingArgs(
            endpoint_name="ep", min_instances=2, max_instances=5, target_tokens_per_minute_per_instance=1234,
            variant_name="V1", metrics_namespace="NS", scale_out_cooldown_seconds=60,
            scale_in_cooldown_seconds=600, target_concurrent_requests_per_instance=7, tags={"a": "b"}))
        return {}

    run = run_program(program, stack="dev")
    scope = {"resourceId": "endpoint/ep/variant/V1", "scalableDimension": "sagemaker:variant:DesiredInstanceCount",
             "serviceNamespace": "sagemaker"}
    assert run.one("aws:appautoscaling/target:Target").inputs == {
        **scope, "maxCapacity": 5, "minCapacity": 2, "tags": {"a": "b"}}
    policies = {p.name: p.inputs for p in run.of_type("aws:appautoscaling/policy:Policy")}
    variant = [{"name": "EndpointName", "value": "ep"}, {"name": "VariantName", "value": "V1"}]

    def query(qid, label, namespace, name, dimensions):
        return {"id": qid, "label": label, "returnData": False, "metricStat": {
            "metric": {"dimensions": dimensions, "metricName": name, "namespace": namespace}, "stat": "Sum"}}

    assert policies == {
        "s-tokens": {**scope, "policyType": "TargetTrackingScaling", "targetTrackingScalingPolicyConfiguration": {
            "customizedMetricSpecification": {"metrics": [
                query("tokens", "Completion tokens per minute (gateway EMF)", "NS", "CompletionTokens",
                      [{"name": "EndpointName", "value": "ep"}]),
                query("invocations", "Invocations per minute", "AWS/SageMaker", "Invocations", variant),
                query("invocations_per_instance", "Invocations per instance per minute", "AWS/SageMaker",
                      "InvocationsPerInstance", variant),
                {"id": "tokens_per_instance", "label": "Completion tokens per minute per instance",
                 "returnData": True, "expression": "IF(FILL(invocations, 0) > 0, FILL(tokens, 0) * "
                                                   "FILL(invocations_per_instance, 0) / FILL(invocations, 0), 0)"},
            ]},
            "scaleInCooldown": 600, "scaleOutCooldown": 60, "targetValue": 1234}},
        "s-concurrency": {**scope, "policyType": "TargetTrackingScaling", "targetTrackingScalingPolicyConfiguration": {
            "predefinedMetricSpecification": {
                "predefinedMetricType": "SageMakerVariantConcurrentRequestsPerModelHighResolution"},
            "scaleInCooldown": 600, "scaleOutCooldown": 60, "targetValue": 7}},
    }
    (component,) = [r for r in run.resources if r.type == "llminfer:aws:TokenAwareAutoscaling"]
    assert component.name == "s"


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        ({"min_instances": 0}, "min_instances",
         "must be at least 1 (a SageMaker real-time endpoint variant cannot scale to zero)"),
        ({"min_instances": 3, "max_instances": 2}, "min_instances", "(3) must not exceed max_instances (2)"),
        ({"max_instances": 0}, "max_instances", "must be a positive number, got 0"),
        ({"target_tokens_per_minute_per_instance": 0}, "target_tokens_per_minute_per_instance",
         "must be a positive number, got 0"),
        ({"metrics_namespace": " "}, "metrics_namespace", "must be a non-empty string, got ' '"),
        ({"variant_name": ""}, "variant_name", "must be a non-empty string, got ''"),
        ({"scale_out_cooldown_seconds": -1}, "scale_out_cooldown_seconds", "must be 0-3600 seconds, got -1"),
        ({"scale_in_cooldown_seconds": 3601}, "scale_in_cooldown_seconds", "must be 0-3600 seconds, got 3601"),
        ({"scale_in_cooldown_seconds": 1.5}, "scale_in_cooldown_seconds", "must be 0-3600 seconds, got 1.5"),
        ({"target_concurrent_requests_per_instance": 0}, "target_concurrent_requests_per_instance",
         "must be a positive number, got 0"),
    ],
)
def test_args_are_refused_with_the_field_and_why(changes, field, message):
    from components import InvalidArgs

    args = {"endpoint_name": "ep", "min_instances": 1, "max_instances": 4,
            "target_tokens_per_minute_per_instance": 100, **changes}
    with pytest.raises(InvalidArgs) as raised:
        TokenAwareAutoscalingArgs(**args).validate()
    assert (raised.value.field, raised.value.message) == (field, message)


def test_edge_values_are_accepted():
    TokenAwareAutoscalingArgs(endpoint_name="ep", min_instances=1, max_instances=1,
                              target_tokens_per_minute_per_instance=1, scale_out_cooldown_seconds=0,
                              scale_in_cooldown_seconds=3600).validate()
    # Without the fast policy its target is not checked.
    TokenAwareAutoscalingArgs(endpoint_name="ep", min_instances=1, max_instances=1,
                              target_tokens_per_minute_per_instance=1, concurrency_scale_out=False,
                              target_concurrent_requests_per_instance=0).validate()


def test_outputs_parenting_and_the_component_named_in_refusals():
    import pulumi

    from components import InvalidArgs

    def program():
        outer = pulumi.ComponentResource("test:outer", "outer")
        scaling = TokenAwareAutoscaling("s", TokenAwareAutoscalingArgs(
            endpoint_name="ep", min_instances=1, max_instances=2, target_tokens_per_minute_per_instance=10),
            pulumi.ResourceOptions(parent=outer))
        alone = TokenAwareAutoscaling("t", TokenAwareAutoscalingArgs(
            endpoint_name="ep2", min_instances=1, max_instances=2, target_tokens_per_minute_per_instance=10,
            concurrency_scale_out=False))
        # Always an Output, even without the fast policy: callers apply() it.
        assert isinstance(alone.concurrency_policy_name, pulumi.Output)
        return {"resource": scaling.resource_id, "tokens": scaling.token_policy_name,
                "concurrency": scaling.concurrency_policy_name, "none": alone.concurrency_policy_name}

    run = run_program(program, stack="dev")
    assert run.outputs["resource"] == "endpoint/ep/variant/AllTraffic"
    assert run.outputs["tokens"].startswith("s-tokens") and run.outputs["concurrency"].startswith("s-concurrency")
    assert run.outputs["none"] is None
    by_name = {r.name: r for r in run.resources}
    assert by_name["s"].parent == by_name["outer"].urn  # the caller's options reach the component
    for child in ("s-target", "s-tokens", "s-concurrency"):
        assert by_name[child].parent == by_name["s"].urn
    for child in ("t-target", "t-tokens"):
        assert by_name[child].parent == by_name["t"].urn
    for bad in ({"min_instances": 0}, {"min_instances": 3}, {"target_tokens_per_minute_per_instance": 0},
                {"metrics_namespace": ""}, {"variant_name": ""}, {"scale_in_cooldown_seconds": -1},
                {"target_concurrent_requests_per_instance": 0}):
        args = {"endpoint_name": "ep", "min_instances": 1, "max_instances": 2,
                "target_tokens_per_minute_per_instance": 10, **bad}
        with pytest.raises(InvalidArgs) as raised:
            TokenAwareAutoscalingArgs(**args).validate()
        assert raised.value.component == "TokenAwareAutoscaling", bad
