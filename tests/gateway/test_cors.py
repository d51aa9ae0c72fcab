"""CORS on the gateway app: the demo UI's origin (and only it) may call the API from a browser.

Run against the real app under uvicorn (the `gateways` fixture) with httpx, headers as a browser sends
them (Fetch standard: a preflight carries Origin, Access-Control-Request-Method and -Headers, never
credentials). The browser end of the same path is tests/local/test_playground_browser.py.
"""

from __future__ import annotations

import json

import httpx
import pytest

from gateway.app import CORS_EXPOSE_HEADERS
from gateway.settings import Settings, SettingsError
from tests.gateway.conftest import MODEL, SCRIPTED_TEXT

UI = "https://d111111abcdef8.cloudfront.net"
OTHER = "https://attacker.example"
KEY = "test-key"  # pragma: allowlist secret (test value)
BASE = {"GATEWAY_ENDPOINT_NAME": "ep", "GATEWAY_MODEL_ID": "m", "AWS_REGION": "eu-west-1"}


def preflight(gateway, origin: str, method: str = "POST", path: str = "/chat/completions") -> httpx.Response:
    return httpx.options(gateway.url + path, headers={
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": "authorization,content-type",
    })


@pytest.fixture
def cors_gateway(gateways):
    return gateways("scripted", api_key=KEY, cors_origins=(UI,))


def test_preflight_from_the_ui_origin_is_answered_without_a_key(cors_gateway):
    reply = preflight(cors_gateway, UI)
    assert reply.status_code == 200, reply.text
    assert reply.headers["access-control-allow-origin"] == UI
    assert {m.strip() for m in reply.headers["access-control-allow-methods"].split(",")} == {"GET", "POST"}
    allowed = {h.strip().lower() for h in reply.headers["access-control-allow-headers"].split(",")}
    assert {"authorization", "content-type", "x-api-key"} <= allowed
    assert reply.headers["access-control-max-age"] == "600"
    assert "access-control-allow-credentials" not in reply.headers
    assert cors_gateway.records == [], "a preflight is not a request: no metric record"


@pytest.mark.parametrize("origin", [OTHER, UI + ":8443", UI.replace("https", "http"), "null"])
def test_preflight_from_any_other_origin_is_refused(cors_gateway, origin):
    reply = preflight(cors_gateway, origin)
    assert reply.status_code == 400
    assert "access-control-allow-origin" not in reply.headers


def test_preflight_for_a_method_not_allowed_is_refused(cors_gateway):
    assert preflight(cors_gateway, UI, method="DELETE").status_code == 400


def test_streamed_reply_to_the_ui_origin_is_readable_by_the_page(cors_gateway):
    body = {"model": MODEL, "stream": True, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "hi"}]}
    with httpx.stream("POST", cors_gateway.url + "/chat/completions", json=body,
                      headers={"Origin": UI, "Authorization": f"Bearer {KEY}"}) as reply:
        assert reply.status_code == 200
        assert reply.headers["access-control-allow-origin"] == UI
        assert "origin" in reply.headers["vary"].lower()
        exposed = {h.strip() for h in reply.headers["access-control-expose-headers"].split(",")}
        assert set(CORS_EXPOSE_HEADERS) <= exposed and "X-Request-Id" in exposed
        events = [line[6:] for line in reply.iter_lines() if line.startswith("data: ")]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in map(json.loads, events[:-1]) if c["choices"])
    assert text == "".join(SCRIPTED_TEXT) and events[-1] == "[DONE]"


@pytest.mark.parametrize(("headers", "status", "code"), [
    ({}, 401, "missing_api_key"),
    ({"Authorization": "Bearer wrong"}, 403, "invalid_api_key"),
])
def test_key_refusals_reach_the_page_with_their_body(cors_gateway, headers, status, code):
    # Without Access-Control-Allow-Origin on the error the browser would hide the 401 as a network error.
    reply = httpx.get(cors_gateway.url + "/models", headers={"Origin": UI, **headers})
    assert reply.status_code == status
    assert reply.headers["access-control-allow-origin"] == UI
    assert reply.json()["error"]["code"] == code


def test_replies_to_other_origins_carry_no_cors_headers(cors_gateway):
    reply = httpx.get(cors_gateway.url + "/models", headers={"Origin": OTHER, "Authorization": f"Bearer {KEY}"})
    assert reply.status_code == 200  # the server answers; the browser keeps it from the other page
    assert "access-control-allow-origin" not in reply.headers


def test_without_cors_origins_there_is_no_cors_at_all(gateways):
    gateway = gateways("scripted", api_key=KEY)
    reply = preflight(gateway, UI)
    assert reply.status_code == 405 and reply.json()["error"]["code"] == "method_not_allowed"
    assert not [h for h in reply.headers if h.startswith("access-control-")]
    reply = httpx.get(gateway.url + "/models", headers={"Origin": UI, "Authorization": f"Bearer {KEY}"})
    assert not [h for h in reply.headers if h.startswith("access-control-")]


# --- the setting ---


def test_cors_origins_from_the_environment_round_trip():
    settings = Settings.from_env({**BASE, "GATEWAY_CORS_ORIGINS": f" {UI} , http://127.0.0.1:8765,"})
    assert settings.cors_origins == (UI, "http://127.0.0.1:8765")
    assert settings.environment()["GATEWAY_CORS_ORIGINS"] == f"{UI},http://127.0.0.1:8765"
    assert Settings.from_env(settings.environment()) == settings
    assert "GATEWAY_CORS_ORIGINS" not in Settings.from_env(BASE).environment()


@pytest.mark.parametrize("origin", [
    "*", UI + "/", UI + "/index.html", "d111111abcdef8.cloudfront.net", "https://D1.CloudFront.net",
    "ftp://example.com", "https://*.cloudfront.net", "https://", "https://a..b",
])
def test_a_value_that_is_not_an_origin_is_refused_with_what_to_write(origin):
    with pytest.raises(SettingsError) as raised:
        Settings.from_env({**BASE, "GATEWAY_CORS_ORIGINS": origin})
    assert raised.value.variable == "GATEWAY_CORS_ORIGINS"
    assert f"{origin!r} is not an origin" in str(raised.value)
    assert "scheme://host[:port]" in str(raised.value)
