"""The gateway's `model` check: only the served model id, exactly, or no `model` at all."""

from __future__ import annotations

import json

import httpx
import pytest

from gateway.chat_request import parse_chat_request
from gateway.errors import GatewayError
from tests.gateway.conftest import MODEL

MESSAGES = [{"role": "user", "content": "hi"}]


def parse(model):
    body = {"messages": MESSAGES} if model is ... else {"model": model, "messages": MESSAGES}
    return parse_chat_request(json.dumps(body).encode(), model_id=MODEL, max_model_len=8192)


def test_the_served_model_and_no_model_at_all_pass():
    assert parse(MODEL).body["model"] == MODEL
    assert "model" not in parse(...).body
    assert parse(None).body["model"] is None  # JSON null: as if absent


@pytest.mark.parametrize(
    "model",
    ["", " ", MODEL[:-1], MODEL + "x", "x" + MODEL, MODEL.split("/")[1], MODEL.upper(), MODEL.title(),
     f" {MODEL}", f"{MODEL} ", f"{MODEL}\n", MODEL.replace("/", "//"), "gpt-4"],
    ids=["empty", "blank", "prefix", "suffix", "leading-char", "without-org", "upper", "title", "leading-space",
         "trailing-space", "newline", "double-slash", "other"],
)
def test_anything_but_the_exact_id_is_404_naming_both(model):
    with pytest.raises(GatewayError) as raised:
        parse(model)
    err = raised.value
    assert (err.status, err.code, err.param, err.type) == (404, "model_not_found", "model", "invalid_request_error")
    assert err.message == (f"The model `{model}` does not exist here; this endpoint serves `{MODEL}` "
                           "(see GET /v1/models)")


@pytest.mark.parametrize(("model", "kind"), [(5, "a number"), (True, "a boolean"), ([MODEL], "a list"),
                                             ({"id": MODEL}, "an object"), (1.5, "a number")])
def test_a_model_that_is_not_a_string_is_400(model, kind):
    with pytest.raises(GatewayError) as raised:
        parse(model)
    err = raised.value
    assert (err.status, err.code, err.param) == (400, "invalid_type", "model")
    assert err.message == f"model must be a string, got {kind}"


def test_through_the_gateway_a_wrong_model_never_reaches_the_endpoint(gateways, emulator):
    gateway = gateways("llm")
    before = len(emulator.calls)
    for model in ("", MODEL.upper(), f"{MODEL} ", 7):
        response = httpx.post(f"{gateway.url}/chat/completions", json={"model": model, "messages": MESSAGES})
        assert response.status_code == (400 if model == 7 else 404), model
    assert len(emulator.calls) == before
    assert httpx.post(f"{gateway.url}/chat/completions",
                      json={"model": MODEL, "messages": MESSAGES, "max_tokens": 1}).status_code == 200
