"""Public entry points require auth, and network ingress is limited to named address ranges.

API Gateway methods need an API key or an authorizer; Function URLs IAM auth, or auth NONE on a
function that checks the API key itself (its key from Secrets Manager); Kubernetes LoadBalancer
Services source ranges, and the pods behind them the API key (a Service open to 0.0.0.0/0 passes only
when every pod it selects requires the key); NSG/firewall/security group rules configured CIDRs; SSH
and RDP are never open to the world; VMs take keys, not passwords.

What one resource cannot show (the function behind a URL, the pods behind a Service) is judged by the
graph checks, which the CrossGuard pack runs as the stack policy `public-entry-auth-graph`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from policy._model import Node, Rule, as_list, get, is_map, number, truthy

# Source values that mean "the whole internet" in AWS, GCP and Azure rules.
ANYWHERE = frozenset({"0.0.0.0/0", "::/0", "*", "internet", "any", "0.0.0.0"})
_ADMIN_PORTS = {22: "SSH", 3389: "RDP"}
# GKE's annotation for an internal (VPC-only) load balancer.
_INTERNAL_LB_ANNOTATIONS = {
    "networking.gke.io/load-balancer-type": "internal",
    "cloud.google.com/load-balancer-type": "internal",
    "service.beta.kubernetes.io/azure-load-balancer-internal": "true",
    "service.beta.kubernetes.io/aws-load-balancer-internal": "true",
}
# The environment variable by which the gateway app (lambda/gateway/settings.py) learns that it checks
# the API key itself, and where the key is: a Secrets Manager secret. A function with it set refuses
# every request without the key, so its Function URL may use auth NONE.
APP_KEY_CHECK_VARIABLE = "GATEWAY_API_KEY_SECRET_ARN"  # pragma: allowlist secret (env var name)
_POD_TEMPLATE_TYPES = {
    "kubernetes:apps/v1:Deployment",
    "kubernetes:apps/v1:StatefulSet",
    "kubernetes:apps/v1:DaemonSet",
}


def _is_anywhere(source: Any) -> bool:
    return str(source).strip().lower() in ANYWHERE


def _port_ranges(value: Any) -> list[tuple[int, int]]:
    """Port specs ("22", "8000-8080", "*", 22) as inclusive ranges."""
    ranges = []
    for item in as_list(value):
        text = str(item).strip()
        if text in ("*", ""):
            ranges.append((0, 65535))
        elif "-" in text:
            low, _, high = text.partition("-")
            if low.strip().isdigit() and high.strip().isdigit():
                ranges.append((int(low), int(high)))
        elif (port := number(text)) is not None:
            ranges.append((int(port), int(port)))
    return ranges


def _open_ingress_message(what: str, ports: list[tuple[int, int]]) -> str:
    admin = [label for port, label in _ADMIN_PORTS.items() if any(lo <= port <= hi for lo, hi in ports)]
    if admin:
        return f"{what} opens {'/'.join(admin)} to the internet; never expose admin ports, use a bastion or IAP"
    return f"{what} admits the whole internet; limit the source to the configured CIDRs"


def _azure_rule_problems(rule: Mapping[str, Any], label: str) -> Iterator[str]:
    if str(rule.get("direction", "")).lower() != "inbound" or str(rule.get("access", "")).lower() != "allow":
        return
    sources = [rule.get("sourceAddressPrefix"), *as_list(rule.get("sourceAddressPrefixes"))]
    if any(s is not None and _is_anywhere(s) for s in sources):
        ports = _port_ranges([rule.get("destinationPortRange"), *as_list(rule.get("destinationPortRanges"))])
        yield _open_ingress_message(f"inbound rule {label}", ports)


def _aws_ingress_problems(rule: Mapping[str, Any], label: str) -> Iterator[str]:
    cidrs = [*as_list(rule.get("cidrBlocks")), *as_list(rule.get("ipv6CidrBlocks"))]
    cidrs += [c for c in (rule.get("cidrIpv4"), rule.get("cidrIpv6")) if c]
    if any(_is_anywhere(c) for c in cidrs):
        protocol = str(rule.get("protocol") or rule.get("ipProtocol") or "")
        if protocol == "-1":
            ports = [(0, 65535)]
        else:
            low, high = number(rule.get("fromPort")), number(rule.get("toPort"))
            ports = [(int(low), int(high))] if low is not None and high is not None else [(0, 65535)]
        yield _open_ingress_message(label, ports)


def _gcp_firewall_problems(inputs: Mapping[str, Any]) -> Iterator[str]:
    if str(inputs.get("direction") or "INGRESS").upper() != "INGRESS":
        return
    if not any(_is_anywhere(s) for s in as_list(inputs.get("sourceRanges"))):
        return
    ports: list[tuple[int, int]] = []
    for allow in as_list(inputs.get("allows")):
        ports += _port_ranges(get(allow, "ports")) or [(0, 65535)]
    if ports:
        yield _open_ingress_message("firewall rule", ports)


def _linux_password_login(os_profile: Any) -> bool:
    if not is_map(os_profile):
        return False
    disabled = get(os_profile, "linuxConfiguration", "disablePasswordAuthentication")
    return bool(os_profile.get("adminPassword")) or (
        get(os_profile, "linuxConfiguration") is not None and not truthy(disabled)
    )


def entry_auth(type_: str, name: str, inputs: Mapping[str, Any]) -> Iterator[str]:
    if type_ == "aws:apigateway/method:Method":
        # Browsers send CORS preflights (OPTIONS) without credentials: they cannot carry a key.
        if str(inputs.get("httpMethod", "")).upper() == "OPTIONS":
            return
        if str(inputs.get("authorization", "NONE")).upper() == "NONE" and not truthy(inputs.get("apiKeyRequired")):
            yield "method has authorization NONE and no API key; set apiKeyRequired=True or an authorizer"
    elif type_ == "aws:apigatewayv2/route:Route":
        if str(inputs.get("authorizationType", "NONE")).upper() == "NONE" and not truthy(inputs.get("apiKeyRequired")):
            yield "route has authorizationType NONE; attach an authorizer (HTTP APIs have no API keys)"
    # aws:lambda/functionUrl:FunctionUrl: auth NONE is judged with its function, in function_url_auth.
    elif type_ == "aws:lambda/permission:Permission":
        # "*" only through the function's URL is what a URL with auth NONE needs (Lambda Developer Guide,
        # urls-auth); whether that URL may be public is judged with its function, in function_url_auth.
        if inputs.get("principal") == "*" and not _through_function_url_only(inputs):
            yield "lets any principal ('*') invoke the function; name the service principal and sourceArn"
    elif type_ == "aws:ec2/securityGroup:SecurityGroup":
        for index, rule in enumerate(as_list(inputs.get("ingress"))):
            if is_map(rule):
                yield from _aws_ingress_problems(rule, f"ingress rule {index}")
    elif type_ == "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule":
        yield from _aws_ingress_problems(inputs, "ingress rule")
    elif type_ == "aws:ec2/securityGroupRule:SecurityGroupRule":
        if inputs.get("type") == "ingress":
            yield from _aws_ingress_problems(inputs, "ingress rule")
    elif type_ == "gcp:compute/firewall:Firewall":
        yield from _gcp_firewall_problems(inputs)
    elif type_.startswith("gcp:") and type_.split(":")[-1].lower().endswith(("iammember", "iambinding")):
        members = [inputs.get("member"), *as_list(inputs.get("members"))]
        public = sorted({m for m in members if m in ("allUsers", "allAuthenticatedUsers")})
        if public:
            yield f"grants {inputs.get('role')} to {', '.join(public)} (anyone on the internet)"
    elif type_ == "gcp:container/cluster:Cluster":
        if truthy(inputs.get("enableLegacyAbac")):
            yield "legacy ABAC lets any authenticated user act cluster-wide; leave enableLegacyAbac off"
        if truthy(get(inputs, "masterAuth", "clientCertificateConfig", "issueClientCertificate")):
            yield "issues a static client certificate for the API server; use IAM auth"
    elif type_ == "azure-native:network:NetworkSecurityGroup":
        for rule in as_list(inputs.get("securityRules")):
            if is_map(rule):
                yield from _azure_rule_problems(rule, str(rule.get("name", "")))
    elif type_ == "azure-native:network:SecurityRule":
        yield from _azure_rule_problems(inputs, str(inputs.get("securityRuleName") or name))
    elif type_ == "azure-native:compute:VirtualMachine":
        if _linux_password_login(inputs.get("osProfile")):
            yield "VM allows password login; set linuxConfiguration.disablePasswordAuthentication and an SSH key"
    elif type_ == "azure-native:compute:VirtualMachineScaleSet":
        if _linux_password_login(get(inputs, "virtualMachineProfile", "osProfile")):
            yield "scale set allows password login; set linuxConfiguration.disablePasswordAuthentication and an SSH key"
    elif type_ == "kubernetes:core/v1:Service":
        yield from _load_balancer_problems(inputs)


def _is_public_load_balancer(props: Mapping[str, Any]) -> bool:
    if get(props, "spec", "type") != "LoadBalancer":
        return False
    annotations = get(props, "metadata", "annotations", default={})
    return not any(
        str(annotations.get(key, "")).lower() == value for key, value in _INTERNAL_LB_ANNOTATIONS.items()
    )


def _source_ranges(props: Mapping[str, Any]) -> list[str]:
    return [str(r) for r in as_list(get(props, "spec", "loadBalancerSourceRanges"))]


def _load_balancer_problems(inputs: Mapping[str, Any]) -> Iterator[str]:
    # No ranges at all is refused outright: admitting the internet must be a choice someone wrote down.
    # 0.0.0.0/0 is that choice; whether the pods behind it require the API key is load_balancer_backends'.
    if _is_public_load_balancer(inputs) and not _source_ranges(inputs):
        yield "LoadBalancer Service without spec.loadBalancerSourceRanges is open to the internet; set the allowed CIDRs"


def _containers(template_spec: Any) -> list[Mapping[str, Any]]:
    return [c for c in as_list(get(template_spec, "containers")) if is_map(c)]


def _requires_api_key(container: Mapping[str, Any]) -> bool:
    """The container is started with an API key taken from a Secret (vLLM: --api-key / VLLM_API_KEY)."""
    secret_envs = {
        str(env.get("name"))
        for env in as_list(container.get("env"))
        if is_map(env) and get(env, "valueFrom", "secretKeyRef")
    }
    if any("API_KEY" in env.upper() for env in secret_envs):
        return True
    words = [str(w) for w in [*as_list(container.get("command")), *as_list(container.get("args"))]]
    for index, word in enumerate(words):
        value = word.split("=", 1)[1] if word.startswith("--api-key=") else (
            words[index + 1] if word == "--api-key" and index + 1 < len(words) else None
        )
        if value and value.startswith("$(") and value[2:-1] in secret_envs:
            return True
    return False


def load_balancer_backends(nodes: Sequence[Node]) -> Iterator[tuple[Node, str]]:
    """Pods behind a public LoadBalancer Service must check the API key; one open to 0.0.0.0/0 is
    acceptable only because they all do (the Service is then "behind the API key")."""
    workloads = [n for n in nodes if n.type in _POD_TEMPLATE_TYPES]
    for service in nodes:
        if service.type != "kubernetes:core/v1:Service" or not _is_public_load_balancer(service.props):
            continue
        selector = get(service.props, "spec", "selector", default={})
        namespace = get(service.props, "metadata", "namespace")
        backends = [
            w for w in workloads
            if selector
            and get(w.props, "metadata", "namespace") == namespace
            and all(get(w.props, "spec", "template", "metadata", "labels", key) == value for key, value in selector.items())
        ]
        if not backends:
            yield service, "public LoadBalancer Service selects no workload of this stack; the policy cannot see that its pods check an API key"
        keyless = [
            w for w in backends
            if not any(_requires_api_key(c) for c in _containers(get(w.props, "spec", "template", "spec")))
        ]
        for workload in keyless:
            yield workload, (
                f"serves the public LoadBalancer Service {service.name!r} without an API key from a Secret; "
                "pass --api-key $(VLLM_API_KEY) with VLLM_API_KEY from secretKeyRef"
            )
        if any(_is_anywhere(r) for r in _source_ranges(service.props)) and (keyless or not backends):
            yield service, (
                "LoadBalancer Service allows 0.0.0.0/0 and not every pod it selects requires the API key; "
                "set the allowed CIDRs, or require the key (vLLM --api-key from a Secret) in every pod"
            )


def _function_checks_key(function: Node) -> bool:
    return bool(str(get(function.props, "environment", "variables", APP_KEY_CHECK_VARIABLE, default="")).strip())


def _is_function_of(function: Node, reference: str) -> bool:
    """FunctionUrl.functionName names the function by name or ARN (optionally with a qualifier)."""
    known = [str(v) for v in (function.props.get("name"), function.props.get("arn")) if v]
    return any(reference == v or reference.startswith(f"{v}:") for v in known)


def _through_function_url_only(inputs: Mapping[str, Any]) -> bool:
    """lambda:InvokeFunctionUrl with FunctionUrlAuthType NONE, or lambda:InvokeFunction with
    InvokedViaFunctionUrl: grants usable only through the function's URL."""
    action = str(inputs.get("action", ""))
    return (action == "lambda:InvokeFunctionUrl" and str(inputs.get("functionUrlAuthType", "")).upper() == "NONE") or (
        action == "lambda:InvokeFunction" and truthy(inputs.get("invokedViaFunctionUrl")))


def function_url_auth(nodes: Sequence[Node]) -> Iterator[tuple[Node, str]]:
    """A Function URL needs AWS_IAM auth, or a function that checks the API key itself.

    Auth NONE lets anyone on the internet invoke the function; that is the intended front door only when
    the function refuses requests without the key (the gateway app does when APP_KEY_CHECK_VARIABLE is
    set: it reads the key from Secrets Manager). The function must be in the same stack to be seen.
    """
    functions = [n for n in nodes if n.type == "aws:lambda/function:Function"]
    for url in nodes:
        if url.type != "aws:lambda/functionUrl:FunctionUrl":
            continue
        if str(url.props.get("authorizationType", "")).upper() == "AWS_IAM":
            continue
        reference = str(url.props.get("functionName") or "")
        targets = [f for f in functions if reference and _is_function_of(f, reference)]
        if not targets:
            yield url, (
                "Function URL without AWS_IAM auth, for a function this stack does not hold, is callable by anyone "
                "on the internet; set authorizationType=AWS_IAM"
            )
        elif not all(_function_checks_key(f) for f in targets):
            yield url, (
                "Function URL without AWS_IAM auth is callable by anyone on the internet and its function does not "
                f"check an API key ({APP_KEY_CHECK_VARIABLE} is not set); set authorizationType=AWS_IAM"
            )


RULE = Rule(
    name="public-entry-auth",
    description="Every public entry point requires auth; ingress is limited to configured CIDRs; no SSH/RDP from the internet.",
    remediation="Require the API key (API Gateway apiKeyRequired, vLLM --api-key from a Secret, the gateway app's own check behind a Function URL) or AWS_IAM on Function URLs, and list the allowed CIDRs on NSGs, firewalls and LoadBalancer Services.",
    resource_checks=(entry_auth,),
    graph_checks=(load_balancer_backends, function_url_auth),
)
