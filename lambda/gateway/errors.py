"""OpenAI-style error replies: `{"error": {"message", "type", "param", "code"}}`.

The `openai` client raises the matching exception class from the status code (400 BadRequestError,
401 AuthenticationError, 403 PermissionDeniedError, 429 RateLimitError, 503 InternalServerError).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any


class GatewayError(Exception):
    """A request the gateway answers with an error instead of a completion."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = dict(headers or {})

    def payload(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def body(self) -> bytes:
        return json.dumps(self.payload()).encode()

    def sse_event(self) -> bytes:
        """The same error as the SSE event that ends a stream which already started."""
        return b"data: " + json.dumps({"error": {k: v for k, v in self.payload()["error"].items() if k != "param"}}).encode() + b"\n\n"


def invalid(message: str, param: str | None = None, code: str = "invalid_value") -> GatewayError:
    return GatewayError(400, message, param=param, code=code)
