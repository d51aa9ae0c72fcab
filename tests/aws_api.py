"""Check recorded Pulumi inputs against botocore's service models, the AWS APIs' own schemas.

The AWS provider's inputs use the API's field names in camelCase for most resources, so turning
them into PascalCase and running botocore's ParamValidator on the operation's input shape catches
a bad enum value, a missing required field or a wrong type before any deploy.
"""

from __future__ import annotations

from typing import Any

import botocore.session
from botocore.validate import ParamValidator

_SESSION = botocore.session.get_session()


def pascal(value: Any, *, tag_lists: bool = True) -> Any:
    """camelCase dict keys -> PascalCase, integral floats -> int (Pulumi sends all numbers as floats)."""
    if isinstance(value, dict):
        return {key[:1].upper() + key[1:]: pascal(item, tag_lists=tag_lists) for key, item in value.items()}
    if isinstance(value, list):
        return [pascal(item, tag_lists=tag_lists) for item in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def tag_list(tags: dict[str, str] | None) -> list[dict[str, str]]:
    return [{"Key": k, "Value": v} for k, v in (tags or {}).items()]


def validate(service: str, operation: str, params: dict[str, Any]) -> None:
    """Raise AssertionError with botocore's report when `params` do not fit the operation's input."""
    model = _SESSION.get_service_model(service).operation_model(operation)
    report = ParamValidator().validate(params, model.input_shape)
    assert not report.has_errors(), f"{service}.{operation}: {report.generate_report()}"


def enum(service: str, shape: str) -> list[str]:
    return list(_SESSION.get_service_model(service).shape_for(shape).enum)
