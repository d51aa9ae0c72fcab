from __future__ import annotations

import pytest

from gateway.authorizer import handler

METHOD_ARN = "arn:aws:execute-api:us-east-1:123456789012:abc123/prod/POST/v1/chat/completions"


def test_bearer_token_becomes_the_usage_plan_key():
    result = handler({"headers": {"authorization": "Bearer sk-abc"}, "methodArn": METHOD_ARN})
    assert result["usageIdentifierKey"] == "sk-abc"
    (statement,) = result["policyDocument"]["Statement"]
    assert statement == {"Action": "execute-api:Invoke", "Effect": "Allow",
                         "Resource": "arn:aws:execute-api:us-east-1:123456789012:abc123/prod/*"}


@pytest.mark.parametrize("headers", [{}, None, {"Authorization": "Basic abc"}, {"Authorization": "Bearer  "},
                                     {"x-api-key": "sk-abc"}])
def test_no_bearer_token_is_unauthorized(headers):
    with pytest.raises(Exception, match="^Unauthorized$"):
        handler({"headers": headers, "methodArn": METHOD_ARN})


def test_authorizer_is_standalone():
    # Deployed alone (authorizer.py at the archive's root): stdlib imports only.
    import ast
    from pathlib import Path

    import gateway.authorizer as module

    tree = ast.parse(Path(module.__file__).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported <= {"__future__"}
