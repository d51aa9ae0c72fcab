"""What each refusal of `InvokeEndpointWithResponseStream` becomes for the client (gateway.sagemaker):
real botocore exceptions (raised by botocore's Stubber on a real client, or built as botocore builds
them), then the same through the running gateway against the emulator."""

from __future__ import annotations

import socket

import botocore.exceptions as boto
import botocore.session
import httpx
import pytest
from botocore.stub import Stubber

from gateway import sagemaker
from gateway.sagemaker import StreamFailure, _engine_message, _snake, call_error, stream_failure
from gateway.settings import Settings
from tests.gateway.conftest import MODEL

MESSAGES = [{"role": "user", "content": "hi"}]
SETTINGS = Settings(endpoint_name="llm-prod", region="us-east-1", model_id=MODEL, retry_after_seconds=7,
                    read_timeout_seconds=42)


def stubbed_client():
    client = botocore.session.get_session().create_client(
        "sagemaker-runtime", region_name="us-east-1", aws_access_key_id="x",
        aws_secret_access_key="x",  # pragma: allowlist secret (dummy credential for the stub)
    )
    return client, Stubber(client)


def client_error(code: str, message: str = "", status: int = 400, **modeled) -> boto.ClientError:
    """The ClientError botocore raises for this error reply (via the Stubber on a real client)."""
    client, stub = stubbed_client()
    stub.add_client_error("invoke_endpoint_with_response_stream", service_error_code=code,
                          service_message=message, http_status_code=status, modeled_fields=modeled or None)
    with stub, pytest.raises(boto.ClientError) as raised:
        client.invoke_endpoint_with_response_stream(EndpointName="llm-prod", Body=b"{}")
    return raised.value


def mapped(err: Exception):
    result = call_error(err, SETTINGS)
    return result.status, result.code, result.type, result.headers


RETRY = {"Retry-After": "7"}


@pytest.mark.parametrize(
    ("err", "expected"),
    [
        (boto.ReadTimeoutError(endpoint_url="https://runtime.sagemaker"), (504, "upstream_timeout", "server_error", {})),
        (boto.EndpointConnectionError(endpoint_url="https://runtime.sagemaker"),
         (503, "upstream_unreachable", "server_error", RETRY)),
        (boto.ConnectTimeoutError(endpoint_url="https://runtime.sagemaker"),
         (503, "upstream_unreachable", "server_error", RETRY)),
        (boto.ConnectionClosedError(endpoint_url="https://runtime.sagemaker"),
         (503, "upstream_unreachable", "server_error", RETRY)),
        (boto.NoCredentialsError(), (500, "gateway_misconfigured", "server_error", {})),
        (boto.PartialCredentialsError(provider="env", cred_var="AWS_SECRET_ACCESS_KEY"),
         (500, "gateway_misconfigured", "server_error", {})),
        (RuntimeError("boom"), (502, "upstream_error", "server_error", {})),
    ],
    ids=["read-timeout", "unreachable", "connect-timeout", "connection-closed", "no-credentials",
         "partial-credentials", "anything-else"],
)
def test_transport_and_credential_failures(err, expected):
    assert mapped(err) == expected


def test_timeout_message_names_the_endpoint_and_the_limit():
    err = call_error(boto.ReadTimeoutError(endpoint_url="u"), SETTINGS)
    assert err.message == "endpoint llm-prod did not answer within 42 s"
    assert "cannot reach the SageMaker runtime" in call_error(boto.EndpointConnectionError(endpoint_url="u"),
                                                               SETTINGS).message


@pytest.mark.parametrize(
    ("code", "status", "expected"),
    [
        ("AccessDeniedException", 400, (500, "gateway_misconfigured", "server_error", {})),
        ("UnrecognizedClientException", 403, (500, "gateway_misconfigured", "server_error", {})),
        ("InvalidSignatureException", 403, (500, "gateway_misconfigured", "server_error", {})),
        ("ExpiredTokenException", 403, (500, "gateway_misconfigured", "server_error", {})),
        ("ThrottlingException", 400, (429, "rate_limit_exceeded", "rate_limit_error", RETRY)),
        ("ThrottledException", 400, (429, "rate_limit_exceeded", "rate_limit_error", RETRY)),
        ("TooManyRequestsException", 429, (429, "rate_limit_exceeded", "rate_limit_error", RETRY)),
        ("ModelNotReadyException", 429, (503, "model_not_ready", "server_error", RETRY)),
        ("ServiceUnavailable", 503, (503, "service_unavailable", "server_error", RETRY)),
        ("InternalFailure", 500, (502, "internal_failure", "server_error", {})),
    ],
)
def test_service_errors(code, status, expected):
    assert mapped(client_error(code, "the service said no", status)) == expected


def test_access_denied_says_to_check_the_role_and_hides_the_service_message():
    err = call_error(client_error("AccessDeniedException", "User arn:aws:sts::1:assumed-role/x is not authorized"),
                     SETTINGS)
    assert err.message == "the gateway may not call endpoint llm-prod (AccessDeniedException): check its role"


def test_validation_error_is_400_unless_the_endpoint_is_missing():
    bad = call_error(client_error("ValidationError", "1 validation error detected: Body too large"), SETTINGS)
    assert (bad.status, bad.code, bad.type) == (400, "invalid_request", "invalid_request_error")
    assert bad.message == "SageMaker rejected the request: 1 validation error detected: Body too large"
    assert bad.headers == {}
    for message in ("Endpoint llm-prod of account 1 not found.", "Endpoint llm-prod does not exist"):
        missing = call_error(client_error("ValidationError", message), SETTINGS)
        assert (missing.status, missing.code, missing.headers) == (503, "endpoint_not_found", RETRY)
        assert "does not exist in us-east-1" in missing.message


@pytest.mark.parametrize(
    ("original", "status", "code"),
    [(400, 400, "model_rejected_request"), (404, 400, "model_rejected_request"),
     (422, 400, "model_rejected_request"), (429, 429, "model_rejected_request"),
     (499, 400, "model_rejected_request"), (500, 502, "model_error"), (503, 502, "model_error"),
     (399, 502, "model_error"), (None, 502, "model_error")],
)
def test_model_errors_follow_the_engines_original_status(original, status, code):
    fields = {"OriginalStatusCode": original, "OriginalMessage": '{"error": {"message": "bad prompt"}}'}
    if original is None:
        fields = {"OriginalMessage": "engine died"}
    err = call_error(client_error("ModelError", "Received client error", 424, **fields), SETTINGS)
    assert (err.status, err.code) == (status, code)
    if status == 502:
        assert err.type == "server_error" and f"({original})" in err.message
    else:
        assert err.message == "the model rejected the request: bad prompt"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"error": {"message": "context too long", "code": 400}}', "context too long"),
        ('{"message": "bad temperature"}', "bad temperature"),
        ('{"error": "plain string"}', "plain string"),
        ('{"error": {"code": 400}}', '{"error": {"code": 400}}'),
        ("[1, 2]", "[1, 2]"),
        ("not json", "not json"),
        ('{"message": 5}', '{"message": 5}'),
    ],
)
def test_engine_message_unwraps_vllm_and_llama_cpp_errors(text, expected):
    assert _engine_message(text) == expected


def test_model_error_without_original_message_uses_the_service_message():
    err = call_error(client_error("ModelError", "the engine timed out", 424, OriginalStatusCode=500), SETTINGS)
    assert err.message == "the model failed (500): the engine timed out"


def test_stream_failures_keep_the_services_code_or_say_the_connection_broke():
    modelled = boto.EventStreamError(
        {"Error": {"Code": "ModelStreamError", "Message": "model crashed"}}, "InvokeEndpointWithResponseStream")
    failure = stream_failure(modelled)
    assert (failure.code, failure.message) == ("ModelStreamError", "model crashed")
    error = failure.gateway_error()
    assert (error.status, error.code, error.type) == (502, "model_stream_error", "server_error")
    assert error.message == "the model's stream failed mid-way (ModelStreamError): model crashed"
    bare = boto.EventStreamError({"Error": {}}, "InvokeEndpointWithResponseStream")
    assert stream_failure(bare).code == "StreamError"
    cut = stream_failure(boto.ConnectionClosedError(endpoint_url="u"))
    assert cut.code == "StreamBroken" and "ConnectionClosedError" in cut.message
    assert isinstance(cut, StreamFailure) and cut.gateway_error().status == 502
    # The endpoint going quiet past the read timeout is a timeout, mid-stream too.
    import urllib3.exceptions

    for timeout in (boto.ReadTimeoutError(endpoint_url="u"), urllib3.exceptions.ReadTimeoutError(None, "u", "slow")):
        quiet = stream_failure(timeout).gateway_error()
        assert (quiet.status, quiet.code, quiet.type) == (504, "upstream_timeout", "server_error")


@pytest.mark.parametrize(("code", "snake"), [("ModelStreamError", "model_stream_error"),
                                             ("InternalStreamFailure", "internal_stream_failure"),
                                             ("ABCError", "abcerror"), ("", ""), ("x", "x")])
def test_snake_case_codes(code, snake):
    assert _snake(code) == snake


# ------------------------------------------------------------------ through the running gateway


def test_a_read_timeout_from_the_endpoint_is_504(gateways):
    # SageMaker (and the emulator) accept the call at once; the model's first byte then never comes.
    gateway = gateways("stalls", read_timeout_seconds=0.5)  # first byte after 30 s
    response = httpx.post(f"{gateway.url}/chat/completions", json={"messages": MESSAGES}, timeout=20)
    assert response.status_code == 504, response.text
    assert response.json()["error"]["code"] == "upstream_timeout"
    (record,) = gateway.records
    assert (record["Status"], record["Outcome"]) == (504, "upstream_timeout")
    # Streamed: the 200 has gone out, so the timeout ends the stream as an error event.
    streamed = httpx.post(f"{gateway.url}/chat/completions", json={"messages": MESSAGES, "stream": True},
                          timeout=20)
    assert streamed.status_code == 200
    assert '"code": "upstream_timeout"' in streamed.text and "[DONE]" not in streamed.text


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_unreachable_runtime_is_503_with_retry_after(emulator):
    from tests.gateway.conftest import serve, settings_for

    settings = settings_for(emulator, "llm", sagemaker_endpoint_url=f"http://127.0.0.1:{free_port()}",
                            retry_after_seconds=3, connect_timeout_seconds=1)
    gateway = serve(settings)
    try:
        response = httpx.post(f"{gateway.url}/chat/completions", json={"messages": MESSAGES}, timeout=20)
    finally:
        gateway.stop()
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "3"
    assert response.json()["error"]["code"] == "upstream_unreachable"
    (record,) = gateway.records
    assert record["Status"] == 503 and record["Outcome"] == "upstream_unreachable"


@pytest.mark.parametrize(("code", "status", "expected_status", "expected_code"),
                         [("AccessDeniedException", 400, 500, "gateway_misconfigured"),
                          ("ValidationError", 400, 400, "invalid_request")])
def test_service_refusals_through_the_gateway(gateways, monkeypatch, code, status, expected_status, expected_code):
    client, stub = stubbed_client()
    stub.add_client_error("invoke_endpoint_with_response_stream", service_error_code=code,
                          service_message="refused", http_status_code=status)
    stub.activate()
    monkeypatch.setattr(sagemaker, "runtime_client", lambda settings: client)
    gateway = gateways("llm")
    response = httpx.post(f"{gateway.url}/chat/completions", json={"messages": MESSAGES, "stream": True})
    stub.deactivate()
    assert response.status_code == expected_status, response.text
    assert response.json()["error"]["code"] == expected_code
    assert "retry-after" not in response.headers


def test_messages_word_for_word_and_replies_without_an_error_body():
    assert call_error(client_error("ThrottlingException", "Rate exceeded"), SETTINGS).message == (
        "SageMaker throttled the call to llm-prod: Rate exceeded")
    assert call_error(client_error("ModelNotReadyException", "warming", 429), SETTINGS).message == (
        "the model on endpoint llm-prod is not ready yet: warming")
    assert call_error(client_error("ServiceUnavailable", "down", 503), SETTINGS).message == (
        "SageMaker is unavailable for endpoint llm-prod: down")
    missing = call_error(client_error("ValidationError", "Endpoint llm-prod not found."), SETTINGS)
    assert missing.type == "server_error"
    # A reply with no error body at all, or a code without a message.
    bare = call_error(boto.ClientError({}, "InvokeEndpointWithResponseStream"), SETTINGS)
    assert (bare.status, bare.code) == (502, "upstream_error")
    assert bare.message == ("SageMaker failed the call (): An error occurred (Unknown) when calling the "
                            "InvokeEndpointWithResponseStream operation: Unknown")
    odd = call_error(boto.ClientError({"Error": {"Code": "Weird"}}, "Op"), SETTINGS)
    assert (odd.code, odd.message) == ("weird", "SageMaker failed the call (Weird): An error occurred (Weird) "
                                                "when calling the Op operation: Unknown")


def test_stream_failure_text():
    assert str(StreamFailure("Code", "msg")) == "Code: msg"
    quiet = stream_failure(boto.ReadTimeoutError(endpoint_url="https://x"))
    assert quiet.code == "ReadTimeout"
    assert quiet.message == 'no byte within the read timeout (Read timeout on endpoint URL: "https://x")'
    assert quiet.gateway_error().message == f"the endpoint stopped sending: {quiet.message}"
    coded = stream_failure(boto.EventStreamError({"Error": {"Code": "X"}}, "Op"))
    assert (coded.code, coded.message) == ("X", "An error occurred (X) when calling the Op operation: Unknown")


def test_credential_and_unknown_failure_messages():
    assert call_error(boto.NoCredentialsError(), SETTINGS).message == "the gateway has no AWS credentials"
    assert call_error(RuntimeError("boom"), SETTINGS).message == "calling SageMaker failed: RuntimeError: boom"
