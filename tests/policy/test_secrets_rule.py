"""no-clear-text-secrets: credentials never in clear text in Lambda/container env or cloud-init."""

from __future__ import annotations

import base64

import pytest

from policy import rule
from policy._secrets import SECRET_NAME

SECRETS = rule("no-clear-text-secrets")


def messages(type_: str, inputs: dict) -> list[str]:
    return [v.message for v in SECRETS.check_resource(type_, "r", inputs)]


@pytest.mark.parametrize("name", ["HF_TOKEN", "VLLM_API_KEY", "DB_PASSWORD", "AWS_SECRET_ACCESS_KEY", "apiKey"])
def test_credential_names(name):
    assert SECRET_NAME.search(name)


@pytest.mark.parametrize("name", ["MAX_TOKENS", "API_KEY_SECRET_ARN", "TOKENS_PER_MINUTE", "OPTION_MAX_ROLLING_BATCH_SIZE", "HF_MODEL_ID"])
def test_not_credential_names(name):
    assert not SECRET_NAME.search(name)


def test_lambda_environment():
    fn = "aws:lambda/function:Function"
    assert messages(fn, {"environment": {"variables": {"API_KEY_SECRET_ARN": "arn:aws:secretsmanager:us-east-1:1:secret:k"}}}) == []  # pragma: allowlist secret (test fixture)
    assert messages(fn, {"environment": {"variables": {"UPSTREAM_API_KEY": "sk-live-1234"}}})  # pragma: allowlist secret (fake key the rule must catch)


def test_sagemaker_hf_token_is_the_named_exception():
    model = "aws:sagemaker/model:Model"
    assert messages(model, {"primaryContainer": {"environment": {"HF_TOKEN": "hf_abc", "HF_MODEL_ID": "m"}}}) == []
    assert messages(model, {"primaryContainer": {"environment": {"OTHER_API_KEY": "abc123"}}})  # pragma: allowlist secret (fake key the rule must catch)


def test_kubernetes_env_value_and_args():
    deployment = "kubernetes:apps/v1:Deployment"

    def with_container(container: dict) -> dict:
        return {"spec": {"template": {"spec": {"containers": [{"name": "vllm", **container}]}}}}

    from_secret = {"env": [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}}],
                   "args": ["--api-key", "$(VLLM_API_KEY)"]}
    assert messages(deployment, with_container(from_secret)) == []
    assert messages(deployment, with_container({"env": [{"name": "HF_TOKEN", "value": "hf_abc"}]}))
    assert messages(deployment, with_container({"args": ["--model", "m", "--api-key", "sk-123"]}))
    assert messages(deployment, with_container({"args": ["--api-key=sk-123"]}))


def test_cloud_init_base64_and_plain():
    vm = "azure-native:compute:VirtualMachine"
    fetched = "#cloud-config\nruncmd:\n  - VLLM_API_KEY=$(az keyvault secret show --vault-name v --name k --query value -o tsv)\n"
    literal = "#cloud-config\nruncmd:\n  - docker run vllm/vllm-openai --api-key sk-1234567890\n"
    assigned = "#!/bin/bash\nexport HF_TOKEN=hf_abcdef123456\n"
    encode = lambda text: base64.b64encode(text.encode()).decode()  # noqa: E731
    assert messages(vm, {"osProfile": {"customData": encode(fetched)}}) == []
    assert messages(vm, {"osProfile": {"customData": encode(literal)}})
    assert messages(vm, {"osProfile": {"customData": encode(assigned)}})
    assert messages("aws:ec2/instance:Instance", {"userData": assigned})
    assert messages("gcp:compute/instance:Instance", {"metadata": {"startup-script": assigned}})


def test_a_shell_variable_is_a_reference_and_a_literal_is_not():
    vm = "azure-native:compute:VirtualMachine"
    encode = lambda text: base64.b64encode(text.encode()).decode()  # noqa: E731

    def found(script: str) -> list[str]:
        return messages(vm, {"osProfile": {"customData": encode(f"#!/bin/bash\n{script}\n")}})

    # What the Azure VM's cloud-init does: the key comes from Key Vault at boot into a variable, and
    # printf writes it to a root-only env file.
    assert found("""api_key=$(secret llm-api-key)\n{\n  printf 'VLLM_API_KEY=%s\\n' "$api_key"\n} > "$tmp\"""") == []
    assert found("""printf 'HF_TOKEN=%s\\n' "${hf_token}" >> /etc/llm/secrets.env""") == []
    assert found("export VLLM_API_KEY=$api_key") == []
    assert found("export VLLM_API_KEY=\"${api_key}\"") == []
    # A literal, assigned or printed, is a clear-text secret.
    assert found("""printf 'VLLM_API_KEY=%s\\n' 'sk-live-0123456789'""")  # pragma: allowlist secret (fake key the rule must catch)
    assert found("""printf '%s=%s\\n' HF_TOKEN hf_abcdef123456""")  # pragma: allowlist secret (fake token the rule must catch)
    assert found("export VLLM_API_KEY=sk-live-0123456789")  # pragma: allowlist secret (fake key the rule must catch)
    assert found("printf -- '--api-key=%s' sk-live-0123456789")  # pragma: allowlist secret (fake key the rule must catch)
    # `$` followed by something that is no variable is not a reference.
    assert found("export DB_PASSWORD='$3cr3t!'")  # pragma: allowlist secret (fake password the rule must catch)
