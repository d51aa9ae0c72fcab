"""Instances per level (bench.level_capacity): the reader spec from a stack's outputs, and what a level records."""

from __future__ import annotations

import json

import bench
from bench.capacity import CapacityUnavailable
from bench.level_capacity import LevelCapacity, spec_from_outputs
from tests.bench.test_cli import fake_pulumi


def test_the_reader_spec_comes_from_outputs_every_stack_has():
    assert spec_from_outputs({"capacity": {"kind": "mock"}, "endpointName": "x"}) == {"kind": "mock"}
    assert spec_from_outputs({"endpointName": "llm-aws", "region": "us-east-1"}) == {
        "kind": "sagemaker", "endpointName": "llm-aws", "region": "us-east-1"}
    assert spec_from_outputs({"clusterName": "c", "namespace": "llm-inference"}) == {
        "kind": "gke", "namespace": "llm-inference", "deployment": "vllm", "hpa": "vllm"}
    assert spec_from_outputs({"vmName": "llm-azure-vm"}) == {"kind": "fixed", "instances": 1}
    assert spec_from_outputs({"url": "http://x/v1"}) is None


class Reader:
    def __init__(self, *answers):
        self.answers = list(answers)

    def read(self):
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_a_steady_level_records_its_counts_without_a_warning():
    counter, level = LevelCapacity(None, reader=Reader((2, 2), (2, 2))), {"warnings": []}
    counter.attach(level, counter.read(), counter.read())
    assert level == {"warnings": [], "instances": {"start": [2, 2], "end": [2, 2]}}


def test_a_count_that_moved_or_is_still_scaling_warns():
    for answers in (((1, 1), (2, 2)), ((1, 2), (1, 2))):
        counter, level = LevelCapacity(None, reader=Reader(*answers)), {}
        counter.attach(level, counter.read(), counter.read())
        (warning,) = level["warnings"]
        assert warning.startswith("instances changed or were scaling during the level (")
        assert "pin minInstances = maxInstances for a capacity run" in warning


def test_a_reader_that_fails_is_noted_and_the_level_kept():
    counter, level = LevelCapacity(None, reader=Reader(CapacityUnavailable("no credentials"),
                                                       CapacityUnavailable("no credentials"))), {}
    counter.attach(level, counter.read(), counter.read())
    assert level == {"warnings": ["instance counts not read: no credentials"]}
    later = {}
    counter.attach(later, None, None)
    assert later == {}  # said once, on the first level, not on every one
    unknown = LevelCapacity({"kind": "nimbus"})
    assert unknown.reader is None and "capacity kind 'nimbus' is unknown" in unknown.note


def test_a_stack_run_records_instances_per_level(tmp_path, monkeypatch, mock_server):
    server = mock_server(max_concurrent=4)  # the mock's GET /capacity: 1 instance of 4 slots
    fake_pulumi(tmp_path, monkeypatch, json.dumps({"url": server.url, "capacity": {"kind": "mock"}}))
    out = tmp_path / "run"
    assert bench.run(["--stack", "dev", "--workers", "0", "--concurrency", "1,2", "--requests", "3", "--warmup", "0",
                      "--max-tokens", "3", "--out", str(out), "--no-progress", "--no-charts"]) == 0
    levels = json.loads((out / "summary.json").read_text())["levels"]
    assert [lv["instances"] for lv in levels] == [{"start": [1, 1], "end": [1, 1]}] * 2
