"""The app's own API-key check, for paths where API Gateway does not check the key (a Function URL).

The key is never in the function's environment: the environment names a Secrets Manager secret, read
once at the first request and kept in memory. Clients send it as `Authorization: Bearer <key>` (what
the `openai` client sends) or as `x-api-key: <key>` (API Gateway's header). Missing -> 401, wrong -> 403.
"""

from __future__ import annotations

import hmac
import threading

from gateway.errors import GatewayError
from gateway.settings import Settings


def presented_key(headers) -> str | None:
    authorization = headers.get("authorization", "")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return headers.get("x-api-key") or None


class KeyCheck:
    def __init__(self, settings: Settings):
        self._settings = settings
        self._key: str | None = settings.api_key
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self._settings.checks_api_key

    def expected(self) -> str:
        if self._key is None:
            with self._lock:
                if self._key is None:
                    self._key = _read_secret(self._settings)
        return self._key

    def check(self, headers) -> None:
        """Raise 401/403 unless the request carries the key (call it off the event loop the first time)."""
        if not self.enabled:
            return
        key = presented_key(headers)
        if key is None:
            raise GatewayError(
                401,
                "missing API key: send `Authorization: Bearer <key>` (the openai client's api_key) or `x-api-key: <key>`",
                code="missing_api_key",
            )
        if not hmac.compare_digest(key.encode(), self.expected().encode()):
            raise GatewayError(403, "the API key is not valid for this gateway", code="invalid_api_key")


def _read_secret(settings: Settings) -> str:
    import botocore.session

    client = botocore.session.get_session().create_client("secretsmanager", region_name=settings.region)
    try:
        value = client.get_secret_value(SecretId=settings.api_key_secret_arn)["SecretString"].strip()
    except Exception as err:
        raise GatewayError(500, f"the gateway cannot read its API key secret ({type(err).__name__}): check its role",
                           type="server_error", code="gateway_misconfigured") from None
    if not value:
        raise GatewayError(500, "the gateway's API key secret is empty", type="server_error",
                           code="gateway_misconfigured")
    return value
