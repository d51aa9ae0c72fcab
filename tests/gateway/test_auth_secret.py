"""The app's own API-key check in function-URL mode: the key comes from Secrets Manager, read once."""

from __future__ import annotations

import threading

import botocore.session
import pytest
from botocore.stub import Stubber

from gateway import auth
from gateway.auth import KeyCheck, presented_key
from gateway.errors import GatewayError
from gateway.settings import Settings

ARN = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:llm-api-key-AbCdEf"  # pragma: allowlist secret (an ARN)
KEY = "sk-from-secrets-manager"  # pragma: allowlist secret (test fixture)


def settings(**kw) -> Settings:
    return Settings(endpoint_name="ep", region="eu-west-1", model_id="m", api_key_secret_arn=ARN, **kw)


@pytest.fixture
def secretsmanager(monkeypatch):
    """A real botocore secretsmanager client behind a Stubber; counts the clients the check creates."""
    client = botocore.session.get_session().create_client(
        "secretsmanager", region_name="eu-west-1", aws_access_key_id="x",
        aws_secret_access_key="x")  # pragma: allowlist secret (dummy credential for the stub)
    stub = Stubber(client)
    created = []
    real_get_session = botocore.session.get_session

    class Session:
        def create_client(self, service, region_name=None, **kw):
            created.append((service, region_name))
            return client

    monkeypatch.setattr(botocore.session, "get_session", lambda: Session())
    stub.activate()
    yield stub, created
    stub.deactivate()
    monkeypatch.setattr(botocore.session, "get_session", real_get_session)


def test_the_secret_is_read_once_and_cached(secretsmanager):
    stub, created = secretsmanager
    stub.add_response("get_secret_value", {"SecretString": f"  {KEY}\n", "ARN": ARN, "Name": "llm-api-key"},
                      {"SecretId": ARN})
    check = KeyCheck(settings())
    assert check.enabled
    for _ in range(3):
        check.check({"authorization": f"Bearer {KEY}"})  # the stored value is stripped
    check.check({"x-api-key": KEY})
    with pytest.raises(GatewayError) as raised:
        check.check({"x-api-key": "wrong"})
    assert (raised.value.status, raised.value.code) == (403, "invalid_api_key")
    assert raised.value.message == "the API key is not valid for this gateway"
    stub.assert_no_pending_responses()
    assert created == [("secretsmanager", "eu-west-1")]  # one client, one read, for all five checks


def test_concurrent_first_requests_read_the_secret_once(secretsmanager):
    stub, created = secretsmanager
    stub.add_response("get_secret_value", {"SecretString": KEY}, {"SecretId": ARN})
    check = KeyCheck(settings())
    errors = []

    def first_request():
        try:
            check.check({"authorization": f"Bearer {KEY}"})
        except Exception as err:  # a second read would find no stubbed response
            errors.append(err)

    threads = [threading.Thread(target=first_request) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(created) == 1


@pytest.mark.parametrize("error_code", ["AccessDeniedException", "ResourceNotFoundException",
                                        "DecryptionFailure"])
def test_an_unreadable_secret_is_500_and_says_to_check_the_role(secretsmanager, error_code):
    stub, _ = secretsmanager
    stub.add_client_error("get_secret_value", service_error_code=error_code, service_message="no",
                          http_status_code=400)
    check = KeyCheck(settings())
    with pytest.raises(GatewayError) as raised:
        check.check({"authorization": f"Bearer {KEY}"})
    err = raised.value
    assert (err.status, err.code, err.type) == (500, "gateway_misconfigured", "server_error")
    # botocore raises a modelled error as its own class (ResourceNotFoundException), others as ClientError.
    assert err.message in (f"the gateway cannot read its API key secret ({name}): check its role"
                           for name in ("ClientError", error_code))
    assert KEY not in err.message and ARN not in err.message


@pytest.mark.parametrize("value", ["   ", "\n", "\t \r\n"])  # "" the service itself refuses to store
def test_an_empty_secret_is_500_not_a_key_everyone_matches(secretsmanager, value):
    stub, _ = secretsmanager
    stub.add_response("get_secret_value", {"SecretString": value}, {"SecretId": ARN})
    check = KeyCheck(settings())
    for presented in ({"authorization": "Bearer x"}, {"x-api-key": " "}):
        with pytest.raises(GatewayError) as raised:
            check.check(presented)
        assert (raised.value.status, raised.value.code, raised.value.type) == (500, "gateway_misconfigured",
                                                                                "server_error")
        assert raised.value.message == "the gateway's API key secret is empty"
        stub.add_response("get_secret_value", {"SecretString": value}, {"SecretId": ARN})


def test_a_failed_read_is_retried_at_the_next_request(secretsmanager):
    stub, _ = secretsmanager
    stub.add_client_error("get_secret_value", service_error_code="ThrottlingException", http_status_code=400)
    stub.add_response("get_secret_value", {"SecretString": KEY}, {"SecretId": ARN})
    check = KeyCheck(settings())
    with pytest.raises(GatewayError):
        check.check({"x-api-key": KEY})
    check.check({"x-api-key": KEY})  # the failure was not cached
    stub.assert_no_pending_responses()


def test_missing_key_is_401_before_any_secret_read(secretsmanager):
    _, created = secretsmanager
    with pytest.raises(GatewayError) as raised:
        KeyCheck(settings()).check({})
    assert (raised.value.status, raised.value.code) == (401, "missing_api_key")
    assert raised.value.message == ("missing API key: send `Authorization: Bearer <key>` (the openai client's "
                                    "api_key) or `x-api-key: <key>`")
    assert created == []


def test_a_local_key_needs_no_secret_and_no_key_means_no_check(secretsmanager):
    _, created = secretsmanager
    local = KeyCheck(Settings(endpoint_name="ep", region="eu-west-1", model_id="m", api_key="k-local"))
    local.check({"x-api-key": "k-local"})
    assert local.expected() == "k-local" and created == []
    open_check = KeyCheck(Settings(endpoint_name="ep", region="eu-west-1", model_id="m"))
    assert not open_check.enabled
    open_check.check({})  # nothing presented, nothing raised


@pytest.mark.parametrize(
    ("headers", "key"),
    [({"authorization": "Bearer abc"}, "abc"), ({"authorization": "bearer  abc "}, "abc"),
     ({"authorization": "Basic abc"}, None), ({"authorization": "Bearer "}, None),
     ({"authorization": "Basic abc", "x-api-key": "k"}, "k"), ({"authorization": "Bearer a", "x-api-key": "k"}, "a"),
     ({"x-api-key": ""}, None), ({}, None)],
)
def test_presented_key(headers, key):
    assert presented_key(headers) == key


def test_the_secret_is_read_from_the_settings_region_and_arn(secretsmanager):
    stub, created = secretsmanager
    stub.add_response("get_secret_value", {"SecretString": KEY}, {"SecretId": ARN})
    assert auth._read_secret(settings()) == KEY
    assert created == [("secretsmanager", "eu-west-1")]
