"""Every taggable resource carries the project, stack and owner tags (labels on GCP and Kubernetes).

Which resource types take tags, and under which input, is read from the provider SDK's own resource
class (its constructor's `tags`, `labels`, `resource_labels` or `user_labels` argument), so the rule
knows every type the SDK knows instead of a hand-kept list. A few types keep their tags elsewhere or
use a `labels` argument for something else; those are spelled out below.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Iterator, Mapping
from functools import cache
from typing import Any

from policy._model import Rule, as_list, get, is_map, provider

REQUIRED_TAGS = ("project", "stack", "owner")

# Where the tags of these types live, overriding what the SDK's argument names suggest.
TAG_PATHS: Mapping[str, tuple[str, ...] | None] = {
    # A node pool has no labels of its own; its VMs take node_config.resource_labels.
    "gcp:container/nodePool:NodePool": ("nodeConfig", "resourceLabels"),
    # The cluster's `resource_labels` label the cluster; `node_config` is only its default pool.
    "gcp:container/cluster:Cluster": ("resourceLabels",),
}
# SDK argument name -> recorded input name, in order of preference: `user_labels` are the tags where a
# type also has `labels` that mean something else (monitoring channels: `labels` is the channel config).
_TAG_ARGUMENTS = (("tags", "tags"), ("user_labels", "userLabels"), ("resource_labels", "resourceLabels"), ("labels", "labels"))
# GCP label and Kubernetes label value syntax (the API rejects anything else at deploy time).
# GCP: lowercase letters (international too), digits, _ and -, at most 63 characters.
_GCP_LABEL_VALUE = re.compile(r"^[\w-]{0,63}$")
_K8S_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_SDK_PACKAGES = {"aws": "pulumi_aws", "gcp": "pulumi_gcp", "azure-native": "pulumi_azure_native"}


@cache
def tag_path(type_: str) -> tuple[str, ...] | None:
    """The input path holding a resource type's tags, or None when the type takes no tags."""
    if type_ in TAG_PATHS:
        return TAG_PATHS[type_]
    package = provider(type_)
    if package == "kubernetes":
        kind = type_.rsplit(":", 1)[-1]
        # Every Kubernetes object has metadata.labels; Patch/List kinds and helm/yaml groupings do not.
        if kind.endswith(("Patch", "List")) or type_.startswith(("kubernetes:helm", "kubernetes:yaml", "kubernetes:kustomize")):
            return None
        return ("metadata", "labels")
    parameters = _constructor_parameters(type_)
    if parameters is None:
        return None
    for argument, recorded in _TAG_ARGUMENTS:
        if argument in parameters:
            return (recorded,)
    return None


@cache
def _constructor_parameters(type_: str) -> frozenset[str] | None:
    """The keyword arguments of the SDK class for a type token, e.g. aws:iam/role:Role -> pulumi_aws.iam.Role."""
    package = _SDK_PACKAGES.get(provider(type_))
    parts = type_.split(":")
    if package is None or len(parts) != 3:
        return None
    module = parts[1].split("/")[0]
    if module == "index":
        module_path = package
    else:
        # Python keywords get a trailing underscore in the SDKs (aws:lambda -> pulumi_aws.lambda_).
        module_path = f"{package}.{module}_" if module in ("lambda",) else f"{package}.{module}"
    try:
        cls = getattr(importlib.import_module(module_path), parts[2])
        return frozenset(inspect.signature(cls._internal_init).parameters)
    except (ImportError, AttributeError, TypeError, ValueError):
        return None


def _value_problem(type_: str, key: str, value: Any) -> str | None:
    if value is None or str(value).strip() == "":
        return f"tag {key!r} is empty"
    text = str(value)
    if provider(type_) == "gcp" and (not _GCP_LABEL_VALUE.match(text) or text != text.lower()):
        return f"label {key}={text!r} is not a valid GCP label value (lowercase letters, digits, _ and -, at most 63)"
    if provider(type_) == "kubernetes" and (len(text) > 63 or not _K8S_LABEL_VALUE.match(text)):
        return f"label {key}={text!r} is not a valid Kubernetes label value (alphanumerics, -, _, ., at most 63)"
    return None


def _as_tag_map(value: Any) -> Mapping[str, Any] | None:
    # Auto Scaling groups take a list of {key, value, propagateAtLaunch} instead of a map.
    if is_map(value):
        return value
    if value is not None and as_list(value) and all(is_map(t) and "key" in t for t in as_list(value)):
        return {t["key"]: t.get("value") for t in as_list(value)}
    return None


def required_tags(type_: str, name: str, inputs: Mapping[str, Any]) -> Iterator[str]:
    path = tag_path(type_)
    if path is None:
        return
    where = ".".join(path)
    tags = _as_tag_map(get(inputs, *path))
    if tags is None:
        yield f"has no {where}; pass standard_tags(...) ({', '.join(REQUIRED_TAGS)})"
        return
    missing = [key for key in REQUIRED_TAGS if key not in tags]
    if missing:
        yield f"{where} lacks {', '.join(missing)}; pass standard_tags(...)"
    for key in REQUIRED_TAGS:
        if key in tags and (problem := _value_problem(type_, key, tags[key])):
            yield problem


RULE = Rule(
    name="required-tags",
    description="Every taggable resource has project, stack and owner tags (labels on GCP and Kubernetes).",
    remediation="Pass stacks.config.standard_tags(cfg, cloud) as tags/labels (metadata.labels on Kubernetes).",
    resource_checks=(required_tags,),
)
