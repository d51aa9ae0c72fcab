"""API Gateway REQUEST authorizer: lets the stock OpenAI client's `Authorization: Bearer <key>` be the
API key of the usage plan.

With the REST API's API key source set to AUTHORIZER, API Gateway takes the key from the authorizer's
`usageIdentifierKey` and then checks it against the usage plan itself (unknown key -> 403, over the
limits -> 429). So this function only lifts the bearer token out of the header; it never sees a list
of valid keys and logs nothing. A request without a bearer token gets 401.

Deployed as its own small function (this file alone, stdlib only), not with the gateway app.
"""

from __future__ import annotations


def bearer_token(headers: dict | None) -> str | None:
    for name, value in (headers or {}).items():
        if name.lower() == "authorization" and isinstance(value, str):
            scheme, _, token = value.strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


def handler(event: dict, context: object = None) -> dict:
    token = bearer_token(event.get("headers"))
    if token is None:
        # The exact message API Gateway maps to a 401 (gateway response UNAUTHORIZED).
        raise Exception("Unauthorized")
    # arn:aws:execute-api:region:account:api-id/stage/METHOD/path -> allow every method of this stage,
    # so that the cached policy (keyed by the header) also covers the client's next calls.
    arn_prefix, _, path = event["methodArn"].partition("/")
    stage = path.split("/", 1)[0]
    return {
        "principalId": "api-key",
        "policyDocument": {
            "Version": "2012-10-17",
            "Statement": [{"Action": "execute-api:Invoke", "Effect": "Allow", "Resource": f"{arn_prefix}/{stage}/*"}],
        },
        "usageIdentifierKey": token,
    }
