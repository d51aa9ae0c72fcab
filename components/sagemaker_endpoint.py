"""A SageMaker real-time endpoint serving an LLM with the LMI (DJL Serving) container and the vLLM engine."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import pulumi
from pulumi_aws import cloudwatch, get_caller_identity_output, get_partition_output, iam, sagemaker

from components._args import require, require_between, require_choice, require_positive, require_text
from components.aws_common import LOG_RETENTION_DAYS, policy_document, sagemaker_instance_types

_COMPONENT = "SageMakerEndpoint"
# botocore's sagemaker model, shape EndpointName: pattern [a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}, max 63.
_ENDPOINT_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
# The LMI images live in one ECR repository per region (a few regions use another account).
_LMI_REPOSITORY = "djl-inference"


@dataclass(frozen=True)
class SageMakerEndpointArgs:
    model_id: str
    region: str
    image_tag: str
    image_account: str = "763104351884"
    instance_type: str = "ml.g5.2xlarge"
    initial_instance_count: int = 1
    max_model_len: int = 8192
    max_batch_size: int = 64
    gpu_memory_utilization: float = 0.9
    # The Hugging Face download of the weights happens inside the container start, so it counts
    # against the startup health check: SageMaker's 5-minute default is too short for an 8B model.
    startup_health_check_timeout_seconds: int = 1800
    model_download_timeout_seconds: int = 1800
    inference_ami_version: str = ""
    log_retention_days: int = 30
    variant_name: str = "AllTraffic"
    endpoint_name: str = ""
    # Only for gated models; a Pulumi secret. LMI reads it from the container environment.
    hf_token: pulumi.Input[str] | None = None
    # Any OPTION_<X> passes through to vLLM as an engine argument.
    extra_env: Mapping[str, str] = field(default_factory=dict)
    # sagemakerVpc: the model's network interfaces in these private subnets and security group
    # (components/sagemaker_vpc.py); None: SageMaker's own network.
    vpc_subnet_ids: pulumi.Input[list[str]] | None = None
    vpc_security_group_ids: pulumi.Input[list[str]] | None = None
    tags: Mapping[str, str] = field(default_factory=dict)

    def validate(self) -> None:
        require_text(_COMPONENT, "model_id", self.model_id)
        require_text(_COMPONENT, "region", self.region)
        require_text(_COMPONENT, "image_tag", self.image_tag)
        require(_COMPONENT, "image_account", re.fullmatch(r"\d{12}", self.image_account) is not None,
                f"must be a 12-digit AWS account id, got {self.image_account!r}")
        require_choice(_COMPONENT, "instance_type", self.instance_type, sagemaker_instance_types(),
                       hint=" (SageMaker's ProductionVariantInstanceType; the seed uses ml.g5.2xlarge)")
        require_positive(_COMPONENT, "initial_instance_count", self.initial_instance_count)
        require_positive(_COMPONENT, "max_model_len", self.max_model_len)
        require_positive(_COMPONENT, "max_batch_size", self.max_batch_size)
        require_between(_COMPONENT, "gpu_memory_utilization", self.gpu_memory_utilization, 0.1, 0.98)
        require_between(_COMPONENT, "startup_health_check_timeout_seconds", self.startup_health_check_timeout_seconds, 60, 3600)
        require_between(_COMPONENT, "model_download_timeout_seconds", self.model_download_timeout_seconds, 60, 3600)
        require(_COMPONENT, "log_retention_days", self.log_retention_days in LOG_RETENTION_DAYS,
                f"{self.log_retention_days!r} is not a CloudWatch retention period; use one of {LOG_RETENTION_DAYS}")
        if self.endpoint_name:
            require(_COMPONENT, "endpoint_name", _ENDPOINT_NAME.fullmatch(self.endpoint_name) is not None,
                    f"{self.endpoint_name!r} is not a valid SageMaker endpoint name (letters, digits and hyphens, "
                    "starting and ending with a letter or digit, at most 63)")
        for key in self.extra_env:
            require(_COMPONENT, "extra_env", key.startswith("OPTION_") or key.isupper(),
                    f"{key!r} is not an environment variable name the LMI container reads (OPTION_<X>, ...)")
        require(_COMPONENT, "extra_env", "OPTION_QUANTIZE" not in self.extra_env,
                "OPTION_QUANTIZE disables vLLM's Marlin kernels for a pre-quantized AWQ model; leave it out")
        require(_COMPONENT, "vpc_subnet_ids", (self.vpc_subnet_ids is None) == (self.vpc_security_group_ids is None),
                "vpc_subnet_ids and vpc_security_group_ids go together (SageMaker's VpcConfig needs both)")
        served = self.extra_env.get("OPTION_SERVED_MODEL_NAME", self.model_id)
        require(_COMPONENT, "extra_env", served == self.model_id,
                f"OPTION_SERVED_MODEL_NAME={served!r} differs from model_id {self.model_id!r}: the gateway accepts "
                "only model_id as `model` and passes it to the engine, which would answer 404; leave it out")

    @property
    def image_uri(self) -> str:
        return self.image_uri_in("amazonaws.com")

    def image_uri_in(self, dns_suffix: str) -> str:
        """The image in the partition's ECR (amazonaws.com; amazonaws.com.cn in China)."""
        return f"{self.image_account}.dkr.ecr.{self.region}.{dns_suffix}/{_LMI_REPOSITORY}:{self.image_tag}"

    def container_environment(self) -> dict[str, str]:
        env = {
            "HF_MODEL_ID": self.model_id,
            "OPTION_ASYNC_MODE": "true",
            "OPTION_ROLLING_BATCH": "disable",
            "OPTION_ENTRYPOINT": "djl_python.lmi_vllm.vllm_async_service",
            "TENSOR_PARALLEL_DEGREE": "max",
            "OPTION_MAX_MODEL_LEN": str(self.max_model_len),
            "OPTION_MAX_ROLLING_BATCH_SIZE": str(self.max_batch_size),
            "OPTION_GPU_MEMORY_UTILIZATION": str(self.gpu_memory_utilization),
            # The name vLLM serves, the one the gateway accepts as `model` (and lists in /v1/models) and
            # passes through. Without it LMI serves "lmi" and vLLM answers every other `model` with 404:
            # djl-serving 0.33.0 djl_python/lmi_vllm/vllm_async_service.py, initialize():
            # `served_model_name or "lmi"`; OPTION_<X> reaches vLLM's EngineArgs as <x>
            # (properties_manager/vllm_rb_properties.py, get_additional_vllm_engine_args).
            "OPTION_SERVED_MODEL_NAME": self.model_id,
        }
        env.update(self.extra_env)
        return env


def derived_endpoint_name(prefix: str, stack: str) -> str:
    """`<prefix>-<stack>` (at most 63 characters), refused now, not 20 minutes into CreateEndpoint, when
    SageMaker would refuse it (Pulumi stack names may hold `_` and `.`; endpoint names may not)."""
    name = f"{prefix}-{stack}"[:63].rstrip("-")
    require(_COMPONENT, "endpoint_name", _ENDPOINT_NAME.fullmatch(name) is not None,
            f"the endpoint name {name!r}, made from the stack name {stack!r}, is not a valid SageMaker endpoint "
            "name (letters, digits and hyphens, starting and ending with a letter or digit, at most 63: "
            f"{_ENDPOINT_NAME.pattern}); use a stack name of letters, digits and hyphens "
            f"(`pulumi stack rename {re.sub(r'[^a-zA-Z0-9-]+', '-', stack).strip('-') or 'aws'}`)")
    return name


def execution_role_trust_policy(partition: str, region: str, account: str) -> str:
    """SageMaker (real-time inference of this account and region) may assume the role.

    AWS's template for inference is `ArnLike aws:SourceArn arn:<partition>:sagemaker:<region>:<account>:*`,
    "the ARN must be in the format provided above" (SageMaker Developer Guide, Cross-service confused deputy
    prevention, SageMaker AI Inference). It documents no aws:SourceAccount for inference, so a condition on
    that key alone risks a role SageMaker cannot assume; the ARN carries the account anyway.
    """
    return policy_document([{
        "Effect": "Allow",
        "Principal": {"Service": "sagemaker.amazonaws.com"},
        "Action": "sts:AssumeRole",
        "Condition": {"ArnLike": {"aws:SourceArn": f"arn:{partition}:sagemaker:{region}:{account}:*"}},
    }])


# What SageMaker does with the execution role to attach a model to the VPC's subnets (SageMaker Developer
# Guide, host-vpc, "Add Permissions for Endpoint Access for Containers Running in a VPC to Custom IAM
# Policies", which grants them on "*"). The Describe calls have no resource type; the network-interface
# calls do (Service Authorization Reference, Amazon EC2: network-interface, subnet, security-group), so
# they are limited to this account and region.
VPC_DESCRIBE_ACTIONS = (
    "ec2:DescribeDhcpOptions",
    "ec2:DescribeNetworkInterfaces",
    "ec2:DescribeSecurityGroups",
    "ec2:DescribeSubnets",
    "ec2:DescribeVpcs",
)
VPC_INTERFACE_ACTIONS = (
    "ec2:CreateNetworkInterface",
    "ec2:CreateNetworkInterfacePermission",
    "ec2:DeleteNetworkInterface",
    "ec2:DeleteNetworkInterfacePermission",
)


def execution_role_policy(partition: str, region: str, account: str, image_account: str, endpoint_name: str,
                          in_vpc: bool = False) -> str:
    """What AWS's CreateModel execution-role template grants (SageMaker Developer Guide, sagemaker-roles,
    "CreateModel API: Execution Role Permissions"), scoped to the LMI repository and this endpoint's log
    group; no S3 (the model comes from Hugging Face)."""
    repository_arn = f"arn:{partition}:ecr:{region}:{image_account}:repository/{_LMI_REPOSITORY}"
    log_group_arn = f"arn:{partition}:logs:{region}:{account}:log-group:/aws/sagemaker/Endpoints/{endpoint_name}"
    ec2 = f"arn:{partition}:ec2:{region}:{account}"
    vpc = [
        {"Sid": "DescribeVpc", "Effect": "Allow", "Action": list(VPC_DESCRIBE_ACTIONS), "Resource": "*"},
        {"Sid": "AttachToVpc", "Effect": "Allow", "Action": list(VPC_INTERFACE_ACTIONS),
         "Resource": [f"{ec2}:network-interface/*", f"{ec2}:subnet/*", f"{ec2}:security-group/*"]},
    ] if in_vpc else []
    return policy_document(vpc + [
        # GetAuthorizationToken has no resource-level permissions: AWS requires "*".
        {"Sid": "EcrLogin", "Effect": "Allow", "Action": ["ecr:GetAuthorizationToken"], "Resource": "*"},
        {
            "Sid": "PullLmiImage",
            "Effect": "Allow",
            "Action": ["ecr:BatchCheckLayerAvailability", "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"],
            "Resource": repository_arn,
        },
        # The template lists logs:CreateLogGroup too: the group exists (made with its retention before the
        # endpoint), so allowing it on that one group creates nothing, and SageMaker's call cannot be denied.
        {
            "Sid": "WriteOwnLogs",
            "Effect": "Allow",
            "Action": ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:DescribeLogStreams", "logs:PutLogEvents"],
            "Resource": [log_group_arn, f"{log_group_arn}:*"],
        },
        # PutMetricData has no resource-level permissions: "*" narrowed by namespace.
        {
            "Sid": "PublishSageMakerMetrics",
            "Effect": "Allow",
            "Action": ["cloudwatch:PutMetricData"],
            "Resource": "*",
            "Condition": {"StringLike": {"cloudwatch:namespace": ["/aws/sagemaker/*", "AWS/SageMaker"]}},
        },
    ])


class SageMakerEndpoint(pulumi.ComponentResource):
    """Execution role, log group, model, endpoint configuration and endpoint."""

    endpoint_name: pulumi.Output[str]
    endpoint_arn: pulumi.Output[str]
    variant_name: pulumi.Output[str]
    model_name: pulumi.Output[str]
    role_arn: pulumi.Output[str]
    log_group_name: pulumi.Output[str]

    def __init__(self, name: str, args: SageMakerEndpointArgs, opts: pulumi.ResourceOptions | None = None):
        args.validate()
        super().__init__(f"llminfer:aws:{_COMPONENT}", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        tags = dict(args.tags)
        # The endpoint name is fixed up front so that its log group can exist (with retention) before
        # SageMaker would create it without one.
        endpoint_name = args.endpoint_name or derived_endpoint_name(name, pulumi.get_stack())

        log_group = cloudwatch.LogGroup(
            f"{name}-logs",
            name=f"/aws/sagemaker/Endpoints/{endpoint_name}",
            retention_in_days=args.log_retention_days,
            tags=tags,
            opts=child,
        )

        invoke = pulumi.InvokeOutputOptions(parent=self)
        account = get_caller_identity_output(opts=invoke).account_id
        # No literal "arn:aws": China (aws-cn) and GovCloud (aws-us-gov) are partitions of their own.
        partition = get_partition_output(opts=invoke)
        role = iam.Role(
            f"{name}-role",
            description=f"SageMaker execution role of endpoint {endpoint_name}",
            assume_role_policy=pulumi.Output.all(partition.partition, account).apply(
                lambda v: execution_role_trust_policy(v[0], args.region, v[1])),
            tags=tags,
            opts=child,
        )
        role_policy = iam.RolePolicy(
            f"{name}-role-policy",
            role=role.id,
            policy=pulumi.Output.all(partition.partition, account).apply(
                lambda v: execution_role_policy(v[0], args.region, v[1], args.image_account, endpoint_name,
                                                in_vpc=args.vpc_subnet_ids is not None)),
            opts=child,
        )

        environment: dict[str, pulumi.Input[str]] = dict(args.container_environment())
        if args.hf_token is not None:
            # In clear in the model's definition (DescribeModel shows it): SageMaker's ContainerDefinition
            # takes plain strings only, no secret references (botocore sagemaker model, Environment:
            # "Don't include any sensitive data"). Pulumi keeps it encrypted in its own state.
            environment["HF_TOKEN"] = pulumi.Output.secret(args.hf_token)
        # SageMaker checks at CreateModel/CreateEndpoint that it can use the role: the role's policy must
        # exist first, or the model's image pull fails on a role without permissions.
        model = sagemaker.Model(
            f"{name}-model",
            execution_role_arn=role.arn,
            primary_container=sagemaker.ModelPrimaryContainerArgs(
                image=partition.dns_suffix.apply(args.image_uri_in),
                mode="SingleModel",
                environment=environment,
            ),
            vpc_config=(sagemaker.ModelVpcConfigArgs(subnets=args.vpc_subnet_ids,
                                                     security_group_ids=args.vpc_security_group_ids)
                        if args.vpc_subnet_ids is not None else None),
            tags=tags,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[role_policy]),
        )
        variant = sagemaker.EndpointConfigurationProductionVariantArgs(
            variant_name=args.variant_name,
            model_name=model.name,
            instance_type=args.instance_type,
            initial_instance_count=args.initial_instance_count,
            container_startup_health_check_timeout_in_seconds=args.startup_health_check_timeout_seconds,
            model_data_download_timeout_in_seconds=args.model_download_timeout_seconds,
            inference_ami_version=args.inference_ami_version or None,
        )
        # Endpoint configurations are immutable: any change makes a new one, which the endpoint then
        # switches to (blue/green) before the old one is deleted.
        endpoint_config = sagemaker.EndpointConfiguration(
            f"{name}-config",
            production_variants=[variant],
            tags=tags,
            opts=child,
        )
        endpoint = sagemaker.Endpoint(
            f"{name}-endpoint",
            name=endpoint_name,
            endpoint_config_name=endpoint_config.name,
            tags=tags,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[log_group, role_policy]),
        )

        self.endpoint_name = endpoint.name
        self.endpoint_arn = endpoint.arn
        self.variant_name = pulumi.Output.from_input(args.variant_name)
        self.model_name = model.name
        self.role_arn = role.arn
        self.log_group_name = log_group.name
        self.register_outputs({
            "endpoint_name": self.endpoint_name,
            "endpoint_arn": self.endpoint_arn,
            "variant_name": self.variant_name,
            "model_name": self.model_name,
            "role_arn": self.role_arn,
            "log_group_name": self.log_group_name,
        })
