"""Least privilege: no `*` action or resource in what a principal is allowed, no admin-level roles.

Covers AWS identity policies (inline, managed, role trust), AWS managed-policy attachments, GCP basic
roles, Azure built-in admin roles and custom role definitions, and Kubernetes RBAC.

Not resource policies (KMS key policies, SNS topic policies): there Resource "*" means the resource the
policy is attached to (a key policy can name no other key), and the principals are named instead, so the
"no '*' resource" test would flag every correct key policy.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

from policy._model import Rule, as_list, get, is_map, json_document

# Actions that AWS authorizes only against Resource "*": they have no resource-level permissions
# (the Service Authorization Reference lists no resource type for them). Each entry says why.
RESOURCE_WILDCARD_REQUIRED: Mapping[str, str] = {
    "ecr:getauthorizationtoken": "the registry login token is account-wide; the action has no resource type",
    "cloudwatch:putmetricdata": "no resource type; narrow it with the cloudwatch:namespace condition key",
    "cloudwatch:getmetricdata": "metric reads have no resource type",
    "cloudwatch:getmetricstatistics": "metric reads have no resource type",
    "cloudwatch:listmetrics": "metric listing has no resource type",
    "xray:puttracesegments": "X-Ray trace ingestion has no resource type",
    "xray:puttelemetryrecords": "X-Ray telemetry ingestion has no resource type",
    "ec2:describenetworkinterfaces": "EC2 Describe* calls have no resource type (Lambda/SageMaker in a VPC need it)",
    "ec2:describesubnets": "EC2 Describe* calls have no resource type",
    "ec2:describesecuritygroups": "EC2 Describe* calls have no resource type",
    "ec2:describevpcs": "EC2 Describe* calls have no resource type",
    "ec2:describedhcpoptions": "EC2 Describe* calls have no resource type (SageMaker in a VPC needs it)",
}

# AWS-managed policies that grant a whole service or everything.
_BROAD_MANAGED_POLICY = re.compile(
    r"^arn:aws[a-z-]*:iam::aws:policy/(?:.+/)?(AdministratorAccess|PowerUserAccess|\w+FullAccess(?:V\d+)?)$"
)
# GCP basic roles grant (nearly) every permission on every service of the project.
_GCP_BASIC_ROLES = {"roles/owner", "roles/editor"}
# Azure built-in roles that grant every action (Owner, Contributor) or the right to grant any role.
_AZURE_ADMIN_ROLES = {
    "8e3af657-a8ff-443c-a75c-2fe8c4bcb635": "Owner",
    "b24988ac-6180-42a0-ab66-4c3b9d06c0b5": "Contributor",
    "18d7d88d-d35e-4fb5-a5c3-7773c20a72d9": "User Access Administrator",
}
_AWS_IDENTITY_POLICY_TYPES = {
    "aws:iam/policy:Policy",
    "aws:iam/rolePolicy:RolePolicy",
    "aws:iam/userPolicy:UserPolicy",
    "aws:iam/groupPolicy:GroupPolicy",
}
_AWS_ATTACHMENT_TYPES = {
    "aws:iam/rolePolicyAttachment:RolePolicyAttachment",
    "aws:iam/userPolicyAttachment:UserPolicyAttachment",
    "aws:iam/groupPolicyAttachment:GroupPolicyAttachment",
    "aws:iam/policyAttachment:PolicyAttachment",
}
_K8S_ROLE_TYPES = {
    "kubernetes:rbac.authorization.k8s.io/v1:Role",
    "kubernetes:rbac.authorization.k8s.io/v1:ClusterRole",
}
_K8S_BINDING_TYPES = {
    "kubernetes:rbac.authorization.k8s.io/v1:RoleBinding",
    "kubernetes:rbac.authorization.k8s.io/v1:ClusterRoleBinding",
}


def _statements(document: Any) -> list[Mapping[str, Any]]:
    return [s for s in as_list(get(document, "Statement")) if is_map(s)]


def _is_everything_arn(resource: str) -> bool:
    # "*", or an ARN whose resource part is "*" (arn:aws:s3:::*, arn:aws:logs:us-east-1:123:*).
    if resource == "*":
        return True
    parts = resource.split(":", 5)
    return len(parts) == 6 and parts[0] == "arn" and parts[5] == "*"


def _policy_problems(document: Any, where: str) -> Iterator[str]:
    if document is None:
        yield f"{where} is not valid JSON"
        return
    for index, statement in enumerate(_statements(document)):
        if statement.get("Effect") != "Allow":
            continue  # a Deny with "*" narrows access
        label = f"{where} statement {statement.get('Sid') or index}"
        if "NotAction" in statement:
            yield f"{label} allows NotAction: that grants every action but the listed ones"
        if "NotResource" in statement:
            yield f"{label} allows NotResource: that grants every resource but the listed ones"
        actions = [str(a) for a in as_list(statement.get("Action"))]
        for action in actions:
            if action == "*" or action.endswith(":*"):
                yield f"{label} allows action {action!r}; list the actions the workload calls"
            elif "*" in action or "?" in action:
                # s3:Get* today is also every Get* action AWS adds tomorrow.
                yield f"{label} allows action pattern {action!r}; list the actions the workload calls"
        resources = [str(r) for r in as_list(statement.get("Resource"))]
        if any(_is_everything_arn(r) for r in resources):
            needing_other = [a for a in actions if a.lower() not in RESOURCE_WILDCARD_REQUIRED]
            if needing_other:
                yield (
                    f"{label} allows {', '.join(needing_other)} on Resource '*'; name the ARNs "
                    "(only actions without resource-level permissions may use '*', see "
                    "policy._iam.RESOURCE_WILDCARD_REQUIRED)"
                )


def _trust_problems(document: Any) -> Iterator[str]:
    for index, statement in enumerate(_statements(document)):
        if statement.get("Effect") != "Allow":
            continue
        principal = statement.get("Principal")
        everyone = principal == "*" or (is_map(principal) and "*" in as_list(principal.get("AWS")))
        if everyone and not statement.get("Condition"):
            yield f"assume-role policy statement {statement.get('Sid') or index} lets any AWS principal assume the role"


def _broad_managed(arn: Any) -> str | None:
    match = _BROAD_MANAGED_POLICY.match(str(arn or ""))
    return match.group(1) if match else None


def least_privilege(type_: str, name: str, inputs: Mapping[str, Any]) -> Iterator[str]:
    if type_ in _AWS_IDENTITY_POLICY_TYPES:
        yield from _policy_problems(json_document(inputs.get("policy")), "policy")
    elif type_ == "aws:iam/role:Role":
        yield from _trust_problems(json_document(inputs.get("assumeRolePolicy")))
        for inline in as_list(inputs.get("inlinePolicies")):
            if is_map(inline) and inline.get("policy"):
                yield from _policy_problems(json_document(inline["policy"]), f"inline policy {inline.get('name', '')}")
        for arn in as_list(inputs.get("managedPolicyArns")):
            if broad := _broad_managed(arn):
                yield f"attaches the AWS-managed {broad}; write a policy with the actions the workload calls"
    elif type_ in _AWS_ATTACHMENT_TYPES:
        if broad := _broad_managed(inputs.get("policyArn")):
            yield f"attaches the AWS-managed {broad}; write a policy with the actions the workload calls"
    elif type_.startswith("gcp:") and type_.split(":")[-1].lower().endswith(("iammember", "iambinding")):
        role = str(inputs.get("role", ""))
        if role in _GCP_BASIC_ROLES:
            yield f"grants the basic role {role}; grant the predefined roles the workload needs"
    elif type_ == "azure-native:authorization:RoleAssignment":
        role_id = str(inputs.get("roleDefinitionId", "")).rstrip("/").rsplit("/", 1)[-1].lower()
        if role_id in _AZURE_ADMIN_ROLES:
            yield f"assigns the built-in {_AZURE_ADMIN_ROLES[role_id]} role; assign a role scoped to what the workload does"
    elif type_ == "azure-native:authorization:RoleDefinition":
        for permission in as_list(inputs.get("permissions")):
            for key in ("actions", "dataActions"):
                if "*" in as_list(get(permission, key)):
                    yield f"custom role allows every {key[:-1]} ('*'); list the operations"
    elif type_ in _K8S_ROLE_TYPES:
        for index, rule in enumerate(as_list(inputs.get("rules"))):
            for key in ("verbs", "resources"):
                if "*" in as_list(get(rule, key)):
                    yield f"RBAC rule {index} allows every {key[:-1]} ('*'); list them"
    elif type_ in _K8S_BINDING_TYPES:
        if get(inputs, "roleRef", "name") == "cluster-admin":
            yield "binds cluster-admin; bind a role with the verbs and resources the workload uses"


RULE = Rule(
    name="iam-least-privilege",
    description="IAM grants name their actions and resources: no '*' (except where the service allows nothing else), no admin roles.",
    remediation="List the actions and resource ARNs the workload uses; see policy._iam.RESOURCE_WILDCARD_REQUIRED for the few actions AWS authorizes only on '*'.",
    resource_checks=(least_privilege,),
)
