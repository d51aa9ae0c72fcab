"""Shared fixtures. The Pulumi harness lives in tests/pulumi_harness.py."""
