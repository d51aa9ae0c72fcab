"""One builder per cloud: config in, components out.

`__main__.py` calls `build(stack_name)`; each builder returns the stack outputs as a dict so that
tests can assert on exactly what `pulumi stack output` would show.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import pulumi

from stacks.config import PROJECT, ConfigError

CLOUDS = ("aws", "azure", "gcp")


def cloud_for(stack_name: str) -> str:
    """The cloud a stack deploys: `llm-inference:cloud` if set, else the stack name."""
    chosen = (pulumi.Config(PROJECT).get("cloud") or "").strip() or stack_name
    if chosen not in CLOUDS:
        raise ConfigError(
            f"{PROJECT}:cloud",
            chosen,
            f"names no cloud this project deploys ({', '.join(CLOUDS)})",
            f"name the stack aws, azure or gcp, or run `pulumi config set {PROJECT}:cloud aws`",
        )
    return chosen


def builder(cloud: str) -> Callable[[], dict[str, Any]]:
    # Imported lazily: a stack loads only its own cloud's provider SDK.
    return importlib.import_module(f"stacks.{cloud}").build


def build(stack_name: str) -> dict[str, Any]:
    return builder(cloud_for(stack_name))()
