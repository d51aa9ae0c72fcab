"""`__main__.py`, the program `pulumi up` runs: it picks the stack's builder and exports its outputs."""

from __future__ import annotations

import runpy

import pulumi
import pytest

from stacks.config import ConfigError
from tests.pulumi_harness import ROOT, run_program, stack_config


def _exports_of_main():
    runpy.run_path(str(ROOT / "__main__.py"), run_name="__main__")
    return dict(pulumi.runtime.get_root_resource().outputs)


def test_main_exports_the_aws_builders_outputs():
    config, secrets = stack_config("aws")
    run = run_program(_exports_of_main, stack="aws", config=config, secret_keys=secrets)
    assert run.outputs["endpointName"] == "llm-aws"
    assert run.outputs["instanceType"] == "ml.g5.2xlarge"


def test_cloud_config_overrides_the_stack_name():
    # A stack called "prod" deploys AWS when llm-inference:cloud says so.
    config, secrets = stack_config("aws")
    run = run_program(_exports_of_main, stack="prod", config=config, secret_keys=secrets)
    assert run.outputs["endpointName"] == "llm-prod"


def test_a_stack_naming_no_cloud_is_refused_with_the_fix():
    config, secrets = stack_config("aws", {"cloud": ""})
    with pytest.raises(ConfigError, match="pulumi config set llm-inference:cloud aws"):
        run_program(_exports_of_main, stack="staging", config=config, secret_keys=secrets)


def test_importing_the_program_modules_creates_no_resources():
    import importlib

    for module in ("stacks", "stacks.aws", "components.sagemaker_endpoint", "components.token_autoscaling"):
        importlib.import_module(module)
    run = run_program(lambda: {}, stack="aws")
    assert run.resources == []
