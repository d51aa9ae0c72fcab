"""The Pulumi mock harness the tests use; it lives in `stacks/rendered.py`, which the local harness shares."""

from stacks.rendered import *  # noqa: F401,F403
from stacks.rendered import (  # noqa: F401
    _aws_arn,
    _aws_state,
    _azure_state,
    _computed_state,
    _unwrap_secrets,
)
