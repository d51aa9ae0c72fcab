"""The AWS endpoint components on their own: typed args and their graphs."""

from __future__ import annotations

import json

import pytest

from components import InvalidArgs
from components.endpoint_monitoring import EndpointMonitoring, EndpointMonitoringArgs
from components.sagemaker_endpoint import SageMakerEndpoint, SageMakerEndpointArgs
from components.token_autoscaling import TokenAwareAutoscaling, TokenAwareAutoscalingArgs
from tests.pulumi_harness import run_program

BASE = dict(model_id="org/model", region="eu-west-1", image_tag="0.34.0-lmi16.0.0-cu128")


def test_image_uri_follows_region_and_account():
    args = SageMakerEndpointArgs(**BASE, image_account="111122223333")
    assert args.image_uri == "111122223333.dkr.ecr.eu-west-1.amazonaws.com/djl-inference:0.34.0-lmi16.0.0-cu128"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"instance_type": "g5.2xlarge"}, "instance_type"),  # an EC2 name, not a SageMaker one
        ({"image_account": "7631"}, "image_account"),
        ({"endpoint_name": "bad_name!"}, "endpoint_name"),
        ({"extra_env": {"OPTION_QUANTIZE": "awq"}}, "extra_env"),
        # The gateway accepts only model_id as `model`: the engine must serve that name.
        ({"extra_env": {"OPTION_SERVED_MODEL_NAME": "lmi"}}, "extra_env"),
        ({"endpoint_name": "llm_prod"}, "endpoint_name"),
        ({"startup_health_check_timeout_seconds": 30}, "startup_health_check_timeout_seconds"),
        ({"max_batch_size": 0}, "max_batch_size"),
        ({"model_id": " "}, "model_id"),
    ],
)
def test_endpoint_args_reject(changes, field):
    with pytest.raises(InvalidArgs) as err:
        SageMakerEndpointArgs(**{**BASE, **changes}).validate()
    assert err.value.field == field


def test_extra_env_passes_through_as_engine_args():
    env = SageMakerEndpointArgs(**BASE, extra_env={"OPTION_ENFORCE_EAGER": "true"}).container_environment()
    assert env["OPTION_ENFORCE_EAGER"] == "true" and env["HF_MODEL_ID"] == "org/model"


def test_the_engine_serves_the_model_id():
    env = SageMakerEndpointArgs(**BASE).container_environment()
    assert env["OPTION_SERVED_MODEL_NAME"] == env["HF_MODEL_ID"] == "org/model"
    same = SageMakerEndpointArgs(**BASE, extra_env={"OPTION_SERVED_MODEL_NAME": "org/model"})
    same.validate()


def test_an_endpoint_name_made_from_the_stack_is_checked_against_sagemakers_pattern():
    from components.sagemaker_endpoint import derived_endpoint_name

    assert derived_endpoint_name("llm", "prod") == "llm-prod"
    assert derived_endpoint_name("llm", "x" * 80) == "llm-" + "x" * 59
    with pytest.raises(InvalidArgs, match=r"stack name 'my_stack'.*pulumi stack rename my-stack"):
        derived_endpoint_name("llm", "my_stack")


def test_component_children_are_parented_and_named_from_the_component():
    def program():
        endpoint = SageMakerEndpoint("chat", SageMakerEndpointArgs(**BASE, endpoint_name="chat-prod"))
        TokenAwareAutoscaling("chat-scaling", TokenAwareAutoscalingArgs(
            endpoint_name=endpoint.endpoint_name, min_instances=1, max_instances=2,
            target_tokens_per_minute_per_instance=30000, concurrency_scale_out=False,
            tags={"project": "p", "stack": "dev", "owner": "o"},
        ))
        EndpointMonitoring("chat-watch", EndpointMonitoringArgs(
            endpoint_name=endpoint.endpoint_name, region="eu-west-1", price_per_hour=1.0, max_instances=2,
            alarm_email="oncall@example.com",
        ))
        return {"name": endpoint.endpoint_name, "role": endpoint.role_arn}

    run = run_program(program, stack="dev")
    assert run.outputs["name"] == "chat-prod"
    components = {r.name: r for r in run.resources if r.type.startswith("llminfer:")}
    assert set(components) == {"chat", "chat-scaling", "chat-watch"}
    for resource in run.resources:
        if resource.custom:
            owner = next(c for c in components.values() if c.urn == resource.parent)
            assert resource.name.startswith(owner.name + "-"), resource.name
    # Without the fast policy there is one policy; the email subscription exists when asked for.
    assert len(run.of_type("aws:appautoscaling/policy:Policy")) == 1
    assert run.one("aws:sns/topicSubscription:TopicSubscription").inputs["endpoint"] == "oncall@example.com"
    # The alarm topic has its own customer-managed key (CloudWatch cannot use alias/aws/sns) in this region.
    key = run.one("aws:kms/key:Key")
    assert run.one("aws:sns/topic:Topic").inputs["kmsMasterKeyId"] == key.state["arn"]
    cloudwatch = next(s for s in json.loads(key.inputs["policy"])["Statement"]
                      if s["Principal"] == {"Service": "cloudwatch.amazonaws.com"})
    assert cloudwatch["Condition"]["ArnLike"]["aws:SourceArn"] == "arn:aws:cloudwatch:eu-west-1:123456789012:alarm:*"
    assert run.one("aws:kms/alias:Alias").inputs["name"] == "alias/llm-inference/dev/chat-watch-alarms"
    assert run.one("aws:sns/topicPolicy:TopicPolicy").inputs["arn"] == run.one("aws:sns/topic:Topic").state["arn"]
    # The scalable target carries the tags it is given.
    assert run.one("aws:appautoscaling/target:Target").inputs["tags"] == {"project": "p", "stack": "dev", "owner": "o"}
    assert run.one("aws:cloudwatch/logGroup:LogGroup").inputs["name"] == "/aws/sagemaker/Endpoints/chat-prod"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"min_instances": 3, "max_instances": 2}, "min_instances"),
        ({"max_instances": 0}, "max_instances"),
        ({"target_tokens_per_minute_per_instance": 0}, "target_tokens_per_minute_per_instance"),
        ({"scale_in_cooldown_seconds": -1}, "scale_in_cooldown_seconds"),
        ({"target_concurrent_requests_per_instance": 0}, "target_concurrent_requests_per_instance"),
    ],
)
def test_autoscaling_args_reject(changes, field):
    base = dict(endpoint_name="e", min_instances=1, max_instances=4, target_tokens_per_minute_per_instance=54000)
    with pytest.raises(InvalidArgs) as err:
        TokenAwareAutoscalingArgs(**{**base, **changes}).validate()
    assert err.value.field == field


def test_monitoring_args_reject_p99_below_p95_and_bad_email():
    base = dict(endpoint_name="e", region="us-east-1", price_per_hour=1.0, max_instances=2)
    with pytest.raises(InvalidArgs, match="slo_latency_p99_ms"):
        EndpointMonitoringArgs(**base, slo_latency_p95_ms=3000, slo_latency_p99_ms=2000).validate()
    with pytest.raises(InvalidArgs, match="alarm_email"):
        EndpointMonitoringArgs(**base, alarm_email="not an email").validate()
