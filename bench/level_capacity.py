"""Instances (pods) behind the endpoint at the start and end of every level, when the bench knows where to look.

An autoscaler that adds an instance mid-run makes per-instance and cost figures wrong, silently. With
`--stack` (or `--capacity`), each level records `instances: {"start": [current, desired], "end": [...]}`
from the readers of bench.capacity, and warns when the count moved or was not settled. Where the stack
exports no `capacity` output the reader spec is derived from outputs every stack has (aws: endpointName and
region; gcp: namespace, Deployment and HPA `vllm`; azure: one VM). A reader that cannot start or read is
reported once, and the run goes on: capacity is context, never a reason to lose a run.
"""

from __future__ import annotations

from collections.abc import Mapping

GKE_WORKLOAD = "vllm"  # components/vllm_kubernetes.py names both the Deployment and the HPA so


def spec_from_outputs(outputs: Mapping) -> dict | None:
    """A bench.capacity reader spec from a stack's outputs, or None when none fits."""
    if isinstance(outputs.get("capacity"), dict):
        return dict(outputs["capacity"])
    if outputs.get("endpointName"):
        return {"kind": "sagemaker", "endpointName": outputs["endpointName"], "region": outputs.get("region")}
    if outputs.get("clusterName") and outputs.get("namespace"):
        return {"kind": "gke", "namespace": outputs["namespace"], "deployment": GKE_WORKLOAD, "hpa": GKE_WORKLOAD}
    if outputs.get("vmName"):
        return {"kind": "fixed", "instances": 1}  # the azure stack: one VM, no autoscaler
    return None


class LevelCapacity:
    """Reads the capacity at level boundaries; `note` says why it could not."""

    def __init__(self, spec: dict | None, url: str | None = None, reader=None):
        from bench.capacity import CapacityUnavailable, from_spec

        self.reader = reader
        self.note: str | None = None
        self._noted = False  # the note goes on the first level it concerns, not on every one
        if reader is None and spec is not None:
            try:
                self.reader = from_spec(spec, url)
            except CapacityUnavailable as exc:
                self.note = f"instance counts not read: {exc}"
            except KeyError as exc:
                self.note = f"instance counts not read: the capacity spec {spec!r} lacks {exc}"

    def read(self) -> list | None:
        from bench.capacity import CapacityUnavailable

        if self.reader is None:
            return None
        try:
            current, desired = self.reader.read()
        except CapacityUnavailable as exc:
            self.note = f"instance counts not read: {exc}"
            return None
        return [current, desired]

    def attach(self, level_summary: dict, start: list | None, end: list | None) -> None:
        if start is None and end is None:
            if self.note and not self._noted:
                level_summary.setdefault("warnings", []).append(self.note)
                self._noted = True
            return
        level_summary["instances"] = {"start": start, "end": end}
        warnings = level_summary.setdefault("warnings", [])
        counts = {tuple(x) for x in (start, end) if x is not None}
        if len({c[0] for c in counts}) > 1 or any(c[1] is not None and c[0] != c[1] for c in counts):
            shown = " -> ".join(f"{x[0]} (desired {x[1]})" for x in (start, end) if x is not None)
            warnings.append(f"instances changed or were scaling during the level ({shown}): per-instance and "
                            "cost figures are off; pin minInstances = maxInstances for a capacity run")
