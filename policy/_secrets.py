"""No secret in clear text where a secret store exists: Lambda environment, container env, cloud-init.

The rule sees values, not whether Pulumi holds them as secrets, so it judges by where a value sits
and what it is called: an environment variable or cloud-init assignment named like a credential
(..._TOKEN, ..._API_KEY, ..._SECRET, ..._PASSWORD) holding a literal, or `--api-key <literal>`.
A reference (`$VAR`, `${VAR}`, `$(VAR)`, an ARN, a file path) is fine: the value then comes from the
store. In scripts, `printf 'NAME=%s\n' "$var"` is judged with its arguments put in place of the format's
directives, so a key fetched at boot and written to an env file is a reference, and a literal argument
is not. The tests add the stronger check with the value itself: tests/policy/test_stacks.py.
"""

from __future__ import annotations

import base64
import binascii
import re
import shlex
from collections.abc import Iterator, Mapping
from typing import Any

from policy._model import Rule, as_list, get, is_map

# The last word of the name says "credential": HF_TOKEN, VLLM_API_KEY, DB_PASSWORD, AWS_SECRET_ACCESS_KEY.
SECRET_NAME = re.compile(
    r"(?:^|_)(?:TOKEN|SECRET|PASSWORD|PASSWD|API_?KEY|APIKEY|PRIVATE_KEY|ACCESS_KEY|SECRET_KEY|CREDENTIALS?)$",
    re.IGNORECASE,
)
# Values that point at a secret instead of being one: a shell/Kubernetes variable or command
# substitution ($var, ${var}, $(VAR), $(command ...)), a template, a path, an ARN, a secret's URL.
_REFERENCE = re.compile(r"^(\$[A-Za-z_{(]|\{\{|<|/|arn:|projects/|https://[\w.-]+\.vault\.azure\.net/)")
# Where SageMaker hosting reads credentials: only the container environment. It has no reference to
# Secrets Manager, and the LMI container reads HF_TOKEN from its environment; the value comes from a
# Pulumi secret and is readable only with sagemaker:DescribeModel.
SAGEMAKER_ENV_ALLOWED = {
    "HF_TOKEN": "SageMaker model environment is the only way LMI takes a Hugging Face token (no secret-store reference)",
}
_ASSIGNMENT = re.compile(
    r"""(?P<name>[A-Za-z_][A-Za-z0-9_]*)\s*[=:]\s*["']?(?P<value>[^\s"'#]*)""",
)
# `printf 'FORMAT' ARGS...` on one line (up to a pipe, redirection, separator or comment).
_PRINTF = re.compile(r"""\bprintf[ \t]+(?:--[ \t]+)?(?P<quote>['"])(?P<format>(?:(?!(?P=quote))[^\n])*)(?P=quote)(?P<args>[^\n|;&>#]*)""")
# printf conversions: %% and %s/%b/%q/%d/... with flags, width and precision.
_PRINTF_DIRECTIVE = re.compile(r"%(?:%|[-+ #0]*\d*(?:\.\d+)?[bcdiouxXeEfgGqs])")
_PRINTF_ESCAPES = {"\\n": "\n", "\\t": "\t", "\\\\": "\\"}
_API_KEY_FLAG = re.compile(r"""--(?:api-key|hf-token|token)(?:=|\s+)["']?(?P<value>[^\s"']+)""")
_POD_WORKLOADS = {
    "kubernetes:apps/v1:Deployment": ("spec", "template", "spec"),
    "kubernetes:apps/v1:StatefulSet": ("spec", "template", "spec"),
    "kubernetes:apps/v1:DaemonSet": ("spec", "template", "spec"),
    "kubernetes:batch/v1:Job": ("spec", "template", "spec"),
    "kubernetes:batch/v1:CronJob": ("spec", "jobTemplate", "spec", "template", "spec"),
    "kubernetes:core/v1:Pod": ("spec",),
}


def is_literal(value: Any) -> bool:
    text = str(value or "").strip()
    return bool(text) and not _REFERENCE.match(text)


def _env_problems(variables: Any, where: str, allowed: Mapping[str, str] = {}) -> Iterator[str]:
    if not is_map(variables):
        return
    for key in variables:
        if SECRET_NAME.search(str(key)) and key not in allowed and is_literal(variables[key]):
            yield f"{where} {key} holds a credential in clear text; keep it in the secret store and pass a reference"


def _script_text(value: Any) -> str:
    """cloud-init/user data as text: base64 decoded when it is base64."""
    text = str(value or "")
    compact = "".join(text.split())
    if compact and len(compact) % 4 == 0 and re.fullmatch(r"[A-Za-z0-9+/=]+", compact):
        try:
            return base64.b64decode(compact, validate=True).decode("utf-8", errors="replace")
        except (binascii.Error, ValueError):
            return text
    return text


def _printf_arguments(text: str) -> list[str]:
    text = text.strip().removesuffix("\\").strip()  # a line continuation
    try:
        return shlex.split(text)
    except ValueError:
        return text.split()


def _printf_output(match: re.Match[str]) -> str:
    """What a printf writes: its format with the arguments (quotes removed) in place of the directives."""
    arguments = iter(_printf_arguments(match["args"]))
    output = _PRINTF_DIRECTIVE.sub(lambda d: "%" if d[0] == "%%" else next(arguments, ""), match["format"])
    for escape, character in _PRINTF_ESCAPES.items():
        output = output.replace(escape, character)
    return f"printf {output}"


def script_problems(script: Any, where: str) -> Iterator[str]:
    text = _PRINTF.sub(_printf_output, _script_text(script))
    for match in _ASSIGNMENT.finditer(text):
        if SECRET_NAME.search(match["name"]) and is_literal(match["value"]):
            yield f"{where} assigns {match['name']} a literal; fetch it at boot from the secret store (Key Vault, Secret Manager, Secrets Manager)"
    for match in _API_KEY_FLAG.finditer(text):
        if is_literal(match["value"]):
            yield f"{where} passes a literal credential on a command line; read it from the secret store at boot"


def _container_problems(container: Mapping[str, Any], label: str) -> Iterator[str]:
    for env in as_list(container.get("env")):
        if is_map(env) and SECRET_NAME.search(str(env.get("name", ""))) and is_literal(env.get("value")):
            yield f"{label} env {env['name']} holds a credential in clear text; use valueFrom.secretKeyRef"
    words = " ".join(str(w) for w in [*as_list(container.get("command")), *as_list(container.get("args"))])
    for match in _API_KEY_FLAG.finditer(words):
        if is_literal(match["value"]):
            yield f"{label} passes a literal credential on its command line; use $(VAR) with VAR from a secretKeyRef"


def clear_text(type_: str, name: str, inputs: Mapping[str, Any]) -> Iterator[str]:
    if type_ == "aws:lambda/function:Function":
        yield from _env_problems(get(inputs, "environment", "variables"), "Lambda environment variable")
    elif type_ == "aws:sagemaker/model:Model":
        containers = [inputs.get("primaryContainer"), *as_list(inputs.get("containers"))]
        for container in containers:
            yield from _env_problems(get(container, "environment"), "container environment variable", SAGEMAKER_ENV_ALLOWED)
    elif type_ in _POD_WORKLOADS:
        pod = get(inputs, *_POD_WORKLOADS[type_])
        for key in ("initContainers", "containers"):
            for container in as_list(get(pod, key)):
                if is_map(container):
                    yield from _container_problems(container, f"container {container.get('name', '')}")
    elif type_ == "kubernetes:core/v1:ConfigMap":
        yield from _env_problems(inputs.get("data"), "ConfigMap key")
    elif type_ in ("azure-native:compute:VirtualMachine", "azure-native:compute:VirtualMachineScaleSet"):
        profile = inputs.get("osProfile") or get(inputs, "virtualMachineProfile", "osProfile")
        yield from script_problems(get(profile, "customData"), "cloud-init (customData)")
        yield from script_problems(inputs.get("userData") or get(inputs, "virtualMachineProfile", "userData"), "userData")
    elif type_ in ("aws:ec2/instance:Instance", "aws:ec2/launchTemplate:LaunchTemplate"):
        yield from script_problems(inputs.get("userData") or inputs.get("userDataBase64"), "user data")
    elif type_ in ("gcp:compute/instance:Instance", "gcp:compute/instanceTemplate:InstanceTemplate"):
        metadata = inputs.get("metadata") or {}
        for key in ("user-data", "startup-script"):
            yield from script_problems(get(metadata, key), f"metadata {key}")
        yield from script_problems(inputs.get("metadataStartupScript"), "startup script")


RULE = Rule(
    name="no-clear-text-secrets",
    description="Credentials never sit in clear text in Lambda/container environments or cloud-init where a secret store exists.",
    remediation="Keep the value in Secrets Manager / Key Vault / Secret Manager / a Kubernetes Secret and pass a reference (ARN, secretKeyRef, fetch at boot); give Pulumi the value only as a secret.",
    resource_checks=(clear_text,),
)
