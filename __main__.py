"""Pulumi entry point: pick the stack's cloud builder and export what it returns."""

import pulumi

from stacks import build

for name, value in build(pulumi.get_stack()).items():
    pulumi.export(name, value)
