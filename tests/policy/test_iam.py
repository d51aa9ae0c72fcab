"""iam-least-privilege: each check with a passing and a failing resource."""

from __future__ import annotations

import json

import pytest

from policy import rule

IAM = rule("iam-least-privilege")


def messages(type_: str, inputs: dict) -> list[str]:
    return [v.message for v in IAM.check_resource(type_, "r", inputs)]


def doc(*statements: dict) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


ENDPOINT_ARN = "arn:aws:sagemaker:us-east-1:123456789012:endpoint/llm"


def test_named_actions_on_named_resources_pass():
    policy = doc({"Effect": "Allow", "Action": ["sagemaker:InvokeEndpoint"], "Resource": ENDPOINT_ARN})
    assert messages("aws:iam/rolePolicy:RolePolicy", {"policy": policy}) == []


@pytest.mark.parametrize("action", ["*", "sagemaker:*", "s3:Get*", "sagemaker:InvokeEndpoint*", "ecr:Batch?etImage"])
def test_wildcard_action_fails(action):
    policy = doc({"Effect": "Allow", "Action": action, "Resource": ENDPOINT_ARN})
    found = messages("aws:iam/rolePolicy:RolePolicy", {"policy": policy})
    assert len(found) == 1 and repr(action) in found[0]


def test_wildcard_resource_fails_for_actions_with_resource_level_permissions():
    policy = doc({"Sid": "Invoke", "Effect": "Allow", "Action": "sagemaker:InvokeEndpoint", "Resource": "*"})
    found = messages("aws:iam/policy:Policy", {"policy": policy})
    assert found and "Invoke" in found[0] and "sagemaker:InvokeEndpoint" in found[0]


def test_wildcard_arn_resource_part_fails():
    policy = doc({"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::*"})
    assert messages("aws:iam/policy:Policy", {"policy": policy})


def test_allow_listed_actions_may_use_wildcard_resource():
    policy = doc(
        {"Effect": "Allow", "Action": ["ecr:GetAuthorizationToken"], "Resource": "*"},
        {"Effect": "Allow", "Action": "cloudwatch:PutMetricData", "Resource": "*",
         "Condition": {"StringEquals": {"cloudwatch:namespace": "LLMInference"}}},
    )
    assert messages("aws:iam/rolePolicy:RolePolicy", {"policy": policy}) == []


def test_allow_listed_action_does_not_cover_others_in_the_same_statement():
    policy = doc({"Effect": "Allow", "Action": ["ecr:GetAuthorizationToken", "ecr:BatchGetImage"], "Resource": "*"})
    found = messages("aws:iam/rolePolicy:RolePolicy", {"policy": policy})
    assert found and "ecr:BatchGetImage" in found[0] and "GetAuthorizationToken" not in found[0]


def test_deny_with_wildcards_is_fine():
    policy = doc({"Effect": "Deny", "Action": "*", "Resource": "*"})
    assert messages("aws:iam/policy:Policy", {"policy": policy}) == []


def test_not_action_allow_fails():
    policy = doc({"Effect": "Allow", "NotAction": "iam:*", "Resource": ENDPOINT_ARN})
    assert any("NotAction" in m for m in messages("aws:iam/policy:Policy", {"policy": policy}))


def test_policy_as_dict_and_single_statement_object():
    policy = {"Version": "2012-10-17", "Statement": {"Effect": "Allow", "Action": "*", "Resource": "*"}}
    assert len(messages("aws:iam/policy:Policy", {"policy": policy})) == 2


def test_role_inline_policies_and_trust_policy():
    trust_ok = doc({"Effect": "Allow", "Principal": {"Service": "sagemaker.amazonaws.com"}, "Action": "sts:AssumeRole"})
    assert messages("aws:iam/role:Role", {"assumeRolePolicy": trust_ok}) == []
    trust_open = doc({"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"})
    inline = [{"name": "all", "policy": doc({"Effect": "Allow", "Action": "*", "Resource": ENDPOINT_ARN})}]
    found = messages("aws:iam/role:Role", {"assumeRolePolicy": trust_open, "inlinePolicies": inline})
    assert len(found) == 2 and any("any AWS principal" in m for m in found)


@pytest.mark.parametrize(
    ("arn", "broad"),
    [
        ("arn:aws:iam::aws:policy/AdministratorAccess", True),
        ("arn:aws:iam::aws:policy/AmazonSageMakerFullAccess", True),
        ("arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole", False),
        ("arn:aws:iam::123456789012:policy/AdministratorAccess", False),  # a customer policy of that name
    ],
)
def test_broad_managed_policy_attachments(arn, broad):
    found = messages("aws:iam/rolePolicyAttachment:RolePolicyAttachment", {"policyArn": arn, "role": "r"})
    assert bool(found) is broad


def test_gcp_basic_roles_fail_predefined_pass():
    assert messages("gcp:projects/iAMMember:IAMMember", {"role": "roles/editor", "member": "serviceAccount:a@b"})
    assert messages("gcp:projects/iAMMember:IAMMember", {"role": "roles/monitoring.metricWriter", "member": "serviceAccount:a@b"}) == []


def test_azure_owner_assignment_fails_reader_passes():
    base = "/subscriptions/0/providers/Microsoft.Authorization/roleDefinitions/"
    assert messages("azure-native:authorization:RoleAssignment", {"roleDefinitionId": base + "8e3af657-a8ff-443c-a75c-2fe8c4bcb635"})
    assert messages("azure-native:authorization:RoleAssignment", {"roleDefinitionId": base + "4633458b-17de-408a-b874-0445c86b69e6"}) == []


def test_azure_custom_role_with_star_fails():
    assert messages("azure-native:authorization:RoleDefinition", {"permissions": [{"actions": ["*"]}]})
    assert messages("azure-native:authorization:RoleDefinition", {"permissions": [{"actions": ["Microsoft.Compute/virtualMachines/read"]}]}) == []


def test_kubernetes_rbac():
    role = "kubernetes:rbac.authorization.k8s.io/v1:ClusterRole"
    assert messages(role, {"rules": [{"apiGroups": [""], "resources": ["*"], "verbs": ["get"]}]})
    assert messages(role, {"rules": [{"apiGroups": ["custom.metrics.k8s.io"], "resources": ["pods"], "verbs": ["get", "list"]}]}) == []
    binding = "kubernetes:rbac.authorization.k8s.io/v1:ClusterRoleBinding"
    assert messages(binding, {"roleRef": {"kind": "ClusterRole", "name": "cluster-admin"}})
    assert messages(binding, {"roleRef": {"kind": "ClusterRole", "name": "system:auth-delegator"}}) == []


def test_key_policies_are_resource_policies_not_checked_for_a_wildcard_resource():
    # In a key policy Resource "*" means this key; the principals are what is named.
    from components.endpoint_monitoring import alarm_key_policy

    policy = alarm_key_policy("aws", "us-east-1", "123456789012")
    assert {s["Resource"] for s in json.loads(policy)["Statement"]} == {"*"}
    assert messages("aws:kms/key:Key", {"policy": policy}) == []
    # The same statements as an identity policy would be refused.
    assert messages("aws:iam/policy:Policy", {"policy": policy})
