from __future__ import annotations

import pytest

from gateway.settings import ENVIRONMENT_VARIABLES, Settings, SettingsError

BASE = {"GATEWAY_ENDPOINT_NAME": "ep", "GATEWAY_MODEL_ID": "m", "AWS_REGION": "eu-west-1"}


def test_defaults_and_region_from_the_lambda_environment():
    settings = Settings.from_env(BASE)
    assert settings.region == "eu-west-1"
    assert settings.metrics_namespace == "LLMInference"
    assert settings.max_model_len == 8192 and not settings.checks_api_key
    assert Settings.from_env(settings.environment()) == settings


@pytest.mark.parametrize(
    ("env", "variable", "words"),
    [
        ({"GATEWAY_ENDPOINT_NAME": ""}, "GATEWAY_ENDPOINT_NAME", "is not set"),
        ({"GATEWAY_MAX_MODEL_LEN": "lots"}, "GATEWAY_MAX_MODEL_LEN", "whole number"),
        ({"GATEWAY_MAX_MODEL_LEN": "0"}, "GATEWAY_MAX_MODEL_LEN", "positive"),
        ({"GATEWAY_PRICE_PER_HOUR": "-1"}, "GATEWAY_PRICE_PER_HOUR", ">= 0"),
        ({"GATEWAY_API_KEY": "k", "GATEWAY_API_KEY_SECRET_ARN": "arn:x"}, "GATEWAY_API_KEY", "not both"),
        ({"AWS_REGION": ""}, "GATEWAY_REGION", "not set"),
    ],
)
def test_bad_environment_names_the_variable(env, variable, words):
    with pytest.raises(SettingsError) as raised:
        Settings.from_env({**BASE, **env})
    assert raised.value.variable == variable
    assert words in str(raised.value)
    assert "'k'" not in str(raised.value), "a key is never echoed"


def test_every_field_has_a_variable():
    import dataclasses

    assert {f.name for f in dataclasses.fields(Settings)} == set(ENVIRONMENT_VARIABLES)
