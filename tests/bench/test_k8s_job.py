"""bench k8s-job: the Indexed Job validates strictly against the Kubernetes schemas and passes checkov like
the GKE stack's own manifests (every suppression has a reason and is still needed); each pod runs its shard."""

from __future__ import annotations

import copy
import json
import re
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

import bench
from bench.config import UsageError
from bench.k8s_job import collect_commands, job_manifests
from tests.stacks.test_gcp import GKE_KUBERNETES_VERSIONS, _checkov

BENCH_ARGS = ["http://vllm.llm.svc:8080/v1", "--rate", "8", "--requests", "200", "--shared-prefix-tokens", "512"]


def _docs(**overrides) -> list[dict]:
    kwargs = {"name": "llm-bench", "namespace": "bench", "shards": 4, "bench_args": BENCH_ARGS,
              "start_at": 1796119200.0, "install": "llm-inference @ git+https://example.com/org/repo@v1",
              "api_key_secret": "vllm-api-key"} | overrides  # pragma: allowlist secret (a Kubernetes Secret's name)
    return job_manifests(**kwargs)


def _job(docs: list[dict]) -> dict:
    (job,) = [d for d in docs if d["kind"] == "Job"]
    return job


@pytest.mark.parametrize("version", GKE_KUBERNETES_VERSIONS)
def test_the_manifests_validate_strictly_against_the_kubernetes_schemas(version):
    docs = _docs()
    assert [d["kind"] for d in docs] == ["Namespace", "NetworkPolicy", "Job"]
    for doc in docs + _docs(image="ghcr.io/org/bench@sha256:" + "a" * 64, install=None, api_key_secret=None):
        kubernetes_validate.validate(doc, version, strict=True)


def test_one_pod_per_shard_each_running_its_own_share_at_the_agreed_time():
    job = _job(_docs())
    spec = job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"], spec["backoffLimit"]) == ("Indexed", 4, 4, 0)
    container = spec["template"]["spec"]["containers"][0]
    script = container["command"][2]
    assert container["command"][:2] == ["/bin/sh", "-c"] and container["args"] == BENCH_ARGS
    assert '--shard "$JOB_COMPLETION_INDEX/4" --start-at 1796119200.000' in script
    assert '--out "$out"' in script and 'out="/results/shard-$JOB_COMPLETION_INDEX"' in script
    assert '/work/venv/bin/pip install --no-cache-dir' in script and "sleep 1800" in script
    assert {"name": "BENCH_INSTALL", "value": "llm-inference @ git+https://example.com/org/repo@v1"} in container["env"]
    # The key is a mounted Secret file, read into the bench's env var in the pod: never in the manifest.
    volumes = {v["name"]: v for v in spec["template"]["spec"]["volumes"]}
    assert volumes["api-key"]["secret"]["secretName"] == "vllm-api-key"  # pragma: allowlist secret (a Secret's name)
    assert "BENCH_API_KEY" in script and "BENCH_API_KEY" not in {e["name"] for e in container["env"]}
    # The shell script really is valid sh, the way the pod runs it.
    subprocess.run(["sh", "-n", "-c", script], check=True)


def test_a_bench_that_fails_before_writing_still_marks_done_keeps_the_pod_and_exits_with_its_code(tmp_path):
    # A bench that stops before making --out (bad endpoint, usage error): the pod must still write DONE (else
    # the printed collect loop waits for ever) and exit with the bench's code after --keep, not touch's error.
    container = _job(_docs(image="ghcr.io/org/bench:1.0", install=None))["spec"]["template"]["spec"]["containers"][0]
    results = tmp_path / "results"
    results.mkdir()
    script = container["command"][2].replace("/results", str(results))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool, body in (("python", "exit 3"), ("sleep", "echo slept \"$1\" >> %s" % (tmp_path / "slept"))):
        (bin_dir / tool).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / tool).chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "JOB_COMPLETION_INDEX": "2"}
    done = subprocess.run(["sh", "-c", script, "bench", *BENCH_ARGS], env=env, capture_output=True, text=True)
    assert done.returncode == 3, done.stderr
    assert (results / "shard-2" / "DONE").is_file()
    assert (tmp_path / "slept").read_text() == "slept 1800\n"


def test_the_project_image_runs_the_bench_without_installing():
    container = _job(_docs(image="ghcr.io/org/bench:1.0", install=None))["spec"]["template"]["spec"]["containers"][0]
    assert "pip" not in container["command"][2] and 'python -m bench "$@"' in container["command"][2]


def test_checkov_passes_and_every_suppression_has_a_reason_and_is_needed(tmp_path):
    checkov = _checkov()
    variants = {"tag": _docs(), "digest": _docs(image="python:3.12-slim@sha256:" + "b" * 64)}
    unsuppressed = copy.deepcopy(variants["tag"])
    for doc in unsuppressed:
        doc["metadata"].pop("annotations", None)
    variants["unsuppressed"] = unsuppressed
    for name, docs in variants.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "bench.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
    result = subprocess.run(
        [checkov, "-d", str(tmp_path), "--framework", "kubernetes", "-o", "json", "--skip-download", "--soft-fail"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    report = report[0] if isinstance(report, list) else report
    assert report["summary"]["parsing_errors"] == 0
    failed: dict[str, set[str]] = {}
    for check in report["results"]["failed_checks"]:
        failed.setdefault(Path(check["file_path"].lstrip("/")).parts[0], set()).add(check["check_id"])
    assert not failed.get("tag") and not failed.get("digest"), failed
    skips = {v.split("=", 1)[0] for k, v in _job(variants["tag"])["metadata"]["annotations"].items()
             if k.startswith("checkov.io/skip")}
    assert failed["unsuppressed"] == skips == {"CKV_K8S_11", "CKV_K8S_43"}
    assert "annotations" not in _job(variants["digest"])["metadata"] or not any(
        "CKV_K8S_43" in v for v in _job(variants["digest"])["metadata"]["annotations"].values())
    for value in _job(variants["tag"])["metadata"]["annotations"].values():
        assert re.fullmatch(r"CKV2?_K8S_\d+=.{20,}", value)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"install": None}, "needs --install SPEC"),
        ({"namespace": "default"}, "a namespace of its own"),
        ({"name": "Bench_1"}, "--name 'Bench_1': a DNS label"),
        ({"shards": 0}, "--shards 0: must be >= 1"),
        ({"bench_args": [*BENCH_ARGS, "--api-key", "sk-1"]}, "give the key with --api-key-secret"),
        ({"bench_args": [*BENCH_ARGS, "--out=/x"]}, "--out: the Job sets it"),
        ({"bench_args": [*BENCH_ARGS, "--shard", "0/2"]}, "--shard: the Job sets it"),
        ({"bench_args": ["--rate", "8"]}, "give the bench's arguments after `--`"),
        ({"bench_args": [BENCH_ARGS[0], "--no-such-flag"]}, "the bench arguments do not parse"),
        ({"memory": "lots"}, "--memory 'lots': a Kubernetes quantity"),
        ({"keep_s": 5}, "--keep 5s"),
    ],
)
def test_bad_input_is_refused_naming_what_is_wrong(overrides, message):
    with pytest.raises(UsageError, match=re.escape(message)):
        _docs(**overrides)


def test_the_command_prints_yaml_and_the_collect_lines(capsys):
    assert bench.run(["k8s-job", "--shards", "2", "--install", "llm-inference", "--", *BENCH_ARGS]) == 0
    out, err = capsys.readouterr()
    docs = list(yaml.safe_load_all(out))
    assert _job(docs)["spec"]["completions"] == 2
    assert "kubectl -n bench cp" in err and "python -m bench merge results/k8s/shard-*" in err
    assert bench.run(["k8s-job", "--shards", "2", "--", *BENCH_ARGS]) == 2
    assert "needs --install SPEC" in capsys.readouterr().err


def test_collect_commands_walk_every_shard():
    text = collect_commands("b", "ns", 3, "out")
    assert "for i in $(seq 0 2)" in text and "batch.kubernetes.io/job-completion-index=$i" in text
    subprocess.run(["sh", "-n", "-c", text], check=True)
