"""Facts about AWS shared by the AWS components, read from botocore's service models where they exist.

Checking values against botocore's own models means a typo fails the preview with the list of valid
values, not the deploy twenty minutes later.
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

# Namespace and dimension of the gateway's Embedded Metric Format lines (CompletionTokens, TTFTMs, ...).
# The gateway app gets the namespace through its environment; the autoscaling policy and the dashboard
# read the same metrics back.
METRICS_NAMESPACE = "LLMInference"
METRICS_DIMENSION = "EndpointName"

# CloudWatch Logs accepts only these retention periods (PutRetentionPolicy).
LOG_RETENTION_DAYS = (
    1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653,
)


@cache
def _service_model(service: str):
    # The loader reads only botocore's bundled models: a session would also read the AWS config, and fail
    # for an AWS_PROFILE this machine does not have.
    from botocore.loaders import create_loader
    from botocore.model import ServiceModel

    return ServiceModel(create_loader().load_service_model(service, "service-2"), service_name=service)


@cache
def enum_values(service: str, shape: str) -> tuple[str, ...]:
    """The allowed values of an enum shape in a botocore service model."""
    return tuple(_service_model(service).shape_for(shape).enum)


def sagemaker_instance_types() -> tuple[str, ...]:
    return enum_values("sagemaker", "ProductionVariantInstanceType")


def policy_document(statements: list[dict[str, Any]]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": statements}, sort_keys=True)
