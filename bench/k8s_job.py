"""`python -m bench k8s-job --shards N ... -- URL [bench flags]`: print a Kubernetes Indexed Job that runs
the bench from N pods at once (one shard each), for load one machine cannot make.

- One pod per shard (`completionMode: Indexed`): pod i runs `python -m bench ... --shard i/N --start-at T`,
  its index from JOB_COMPLETION_INDEX (set by Kubernetes for Indexed Jobs). T is fixed when the manifest is
  generated (now + --start-in), so apply it soon after; the pip install must finish before T.
- Image: a stock Python image and `pip install` of this project (--install, a pip requirement such as a
  git URL or a wheel's URL) into a venv on an emptyDir, or the project's own image with --no-install.
- Results: each pod writes `/results/shard-i/` on an emptyDir, then stays up --keep (default 30 min) so
  they can be copied back with `kubectl cp` (the commands are printed on stderr), then exits with the
  bench's exit code. `python -m bench merge` combines the copies.
- The pods run as a non-root user with a read-only root filesystem, no service-account token, all
  capabilities dropped and the runtime's seccomp profile; the API key comes from a Secret mounted as a file.

The manifest passes kubernetes-validate (strict) and checkov, as the stacks' own manifests do
(tests/bench/test_k8s_job.py); what checkov flags on purpose carries a `checkov.io/skip` annotation with why.
"""

from __future__ import annotations

import re
import shlex
import sys
import time

import yaml

from bench.cli_base import USAGE_EXIT, ArgParser
from bench.config import UsageError

DEFAULT_IMAGE = "python:3.12-slim"
USER_ID = 10001
RESULTS = "/results"
SECRET_DIR = "/var/run/bench-secret"
# Flags the Job sets itself (per pod), or that would put a secret into the manifest.
OWN_FLAGS = ("--shard", "--start-at", "--out", "--api-key", "--no-progress")
_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,50}[a-z0-9])?")
_QUANTITY = re.compile(r"\d+(\.\d+)?(m|Ki|Mi|Gi|Ti|k|M|G|T)?")


def _script(shards: int, start_at: float, install: str | None, keep_s: int) -> str:
    python = "/work/venv/bin/python" if install else "python"
    lines = ["set -eu"]
    if install:
        lines += [
            "python -m venv /work/venv",
            '/work/venv/bin/pip install --no-cache-dir --disable-pip-version-check --quiet "$BENCH_INSTALL"',
        ]
    lines += [
        f'if [ -f {SECRET_DIR}/api-key ]; then BENCH_API_KEY="$(cat {SECRET_DIR}/api-key)"; export BENCH_API_KEY; fi',
        f'out="{RESULTS}/shard-$JOB_COMPLETION_INDEX"',
        # Made here, not by the bench: one that stops before writing must still leave DONE for the collect loop.
        'mkdir -p "$out"',
        "rc=0",
        f'{python} -m bench "$@" --shard "$JOB_COMPLETION_INDEX/{shards}" --start-at {start_at:.3f} '
        '--out "$out" --no-progress || rc=$?',
        'touch "$out/DONE"',
        f'echo "bench exited $rc; results in $out until the pod ends in {keep_s} s (kubectl cp)"',
        f"sleep {keep_s}",
        'exit "$rc"',
    ]
    return "\n".join(lines) + "\n"


def job_manifests(*, name: str, namespace: str, shards: int, bench_args: list[str], start_at: float,
                  image: str = DEFAULT_IMAGE, install: str | None = None, api_key_secret: str | None = None,
                  cpu: str = "2", memory: str = "2Gi", keep_s: int = 1800, create_namespace: bool = True) -> list[dict]:
    """The Namespace (optional), a NetworkPolicy and the Indexed Job, as dicts; validates every input first."""
    _validate(name, namespace, shards, bench_args, image, install, api_key_secret, cpu, memory, keep_s)
    labels = {"app.kubernetes.io/name": "llm-bench", "app.kubernetes.io/instance": name}
    skips = {
        "CKV_K8S_11": "no CPU limit: CFS throttling of the load generator would show up as latency in every figure",
    }
    if "@sha256:" not in image:
        skips["CKV_K8S_43"] = f"image {image} by tag; pass --image IMAGE@sha256:DIGEST to pin a digest"
    volumes = [
        {"name": "work", "emptyDir": {}},
        {"name": "results", "emptyDir": {}},
        {"name": "tmp", "emptyDir": {}},
    ]
    mounts = [
        {"name": "work", "mountPath": "/work"},
        {"name": "results", "mountPath": RESULTS},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    if api_key_secret:
        volumes.append({"name": "api-key", "secret": {"secretName": api_key_secret, "defaultMode": 0o440,
                                                      "items": [{"key": "api-key", "path": "api-key"}]}})
        mounts.append({"name": "api-key", "mountPath": SECRET_DIR, "readOnly": True})
    env = [
        {"name": "HOME", "value": "/tmp"},
        {"name": "MPLCONFIGDIR", "value": "/tmp/matplotlib"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    if install:
        env.append({"name": "BENCH_INSTALL", "value": install})
    container = {
        "name": "bench",
        "image": image,
        "imagePullPolicy": "Always",
        "command": ["/bin/sh", "-c", _script(shards, start_at, install, keep_s), "bench"],
        "args": list(bench_args),
        "env": env,
        "resources": {"requests": {"cpu": cpu, "memory": memory}, "limits": {"memory": memory}},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "runAsUser": USER_ID,
            "runAsGroup": USER_ID,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": mounts,
    }
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": dict(labels),
            "annotations": {f"checkov.io/skip{i}": f"{check}={why}" for i, (check, why) in
                            enumerate(sorted(skips.items()), 1)},
        },
        "spec": {
            "completionMode": "Indexed",
            "completions": shards,
            "parallelism": shards,  # every shard at once: they share one --start-at
            "backoffLimit": 0,  # a shard run again would load the server twice and break the merge
            "ttlSecondsAfterFinished": 3600,
            "template": {
                "metadata": {"labels": dict(labels)},
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,
                    "securityContext": {"runAsNonRoot": True, "runAsUser": USER_ID, "runAsGroup": USER_ID,
                                        "fsGroup": USER_ID, "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        },
    }
    docs = []
    if create_namespace:
        docs.append({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": namespace, "labels": {f"pod-security.kubernetes.io/{mode}": "restricted"
                                                       for mode in ("enforce", "audit", "warn")}},
        })
    # No ingress to the load generators at all; egress stays open (the endpoint, DNS, the package index).
    policy = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(labels)},
        "spec": {"podSelector": {"matchLabels": dict(labels)}, "policyTypes": ["Ingress"]},
    }
    return docs + [policy, job]


def _validate(name, namespace, shards, bench_args, image, install, api_key_secret, cpu, memory, keep_s) -> None:
    for flag, value in (("--name", name), ("--namespace", namespace)):
        if not _NAME.fullmatch(value):
            raise UsageError(f"{flag} {value!r}: a DNS label: lower-case letters, digits and '-', at most 52 characters")
    if namespace == "default":
        raise UsageError("--namespace default: give the bench a namespace of its own (e.g. bench)")
    if shards < 1:
        raise UsageError(f"--shards {shards}: must be >= 1")
    if api_key_secret is not None and not _NAME.fullmatch(api_key_secret):
        raise UsageError(f"--api-key-secret {api_key_secret!r}: the name of a Secret with an `api-key` key")
    if not install and image == DEFAULT_IMAGE:
        raise UsageError(
            "the stock Python image needs --install SPEC (this project as a pip requirement, e.g. "
            "'llm-inference @ git+https://github.com/OWNER/REPO@TAG'), or --image with the bench in it and --no-install"
        )
    for flag, value in (("--cpu", cpu), ("--memory", memory)):
        if not _QUANTITY.fullmatch(value):
            raise UsageError(f"{flag} {value!r}: a Kubernetes quantity such as 2, 500m or 2Gi")
    if keep_s < 60:
        raise UsageError(f"--keep {keep_s}s: keep the pods at least a minute so `kubectl cp` can copy the results")
    if not bench_args or bench_args[0].startswith("-"):
        raise UsageError("give the bench's arguments after `--`: -- URL [flags], e.g. -- http://vllm.llm:8080/v1 --rate 8")
    for arg in bench_args:
        flag = arg.split("=", 1)[0]
        if flag in OWN_FLAGS:
            raise UsageError(f"{flag}: the Job sets it for every pod (give the key with --api-key-secret)"
                             if flag == "--api-key" else f"{flag}: the Job sets it for every pod; leave it out")
    from bench.cli import build_parser

    parser = build_parser()
    try:
        parser.parse_args(bench_args)
    except SystemExit:
        raise UsageError(f"the bench arguments do not parse: {shlex.join(bench_args)}") from None


def collect_commands(name: str, namespace: str, shards: int, dest: str) -> str:
    """The shell lines that copy each shard's results back and merge them."""
    return "\n".join([
        f"# when every pod has written {RESULTS}/shard-I/DONE (they stay up for --keep after the bench):",
        f"for i in $(seq 0 {shards - 1}); do",
        f"  pod=$(kubectl -n {namespace} get pod -l job-name={name},batch.kubernetes.io/job-completion-index=$i "
        "-o jsonpath='{.items[0].metadata.name}')",
        f"  until kubectl -n {namespace} exec \"$pod\" -- test -f {RESULTS}/shard-$i/DONE; do sleep 10; done",
        f"  kubectl -n {namespace} cp \"$pod:{RESULTS}/shard-$i\" {dest}/shard-$i",
        "done",
        f"python -m bench merge {dest}/shard-* --out {dest}/merged",
    ])


def main(argv: list[str]) -> int:
    if "--" in argv:
        cut = argv.index("--")
        own, bench_args = argv[:cut], argv[cut + 1:]
    else:
        own, bench_args = argv, []
    p = ArgParser(prog="python -m bench k8s-job", description=__doc__.split("\n")[0] + " " + __doc__.split("\n")[1])
    p.add_argument("--shards", type=int, required=True, help="pods, one shard each")
    p.add_argument("--name", default="llm-bench", help="the Job's name (default llm-bench)")
    p.add_argument("--namespace", default="bench", help="namespace (default bench)")
    p.add_argument("--no-namespace", action="store_true", help="do not emit the Namespace (it exists already)")
    p.add_argument("--image", default=DEFAULT_IMAGE, help=f"container image (default {DEFAULT_IMAGE}; pin @sha256:...)")
    p.add_argument("--install", help="pip requirement of this project, installed in each pod before the run")
    p.add_argument("--no-install", action="store_true", help="the image has the bench already")
    p.add_argument("--api-key-secret", help="a Secret in the namespace whose `api-key` key is the endpoint's key")
    p.add_argument("--start-in", default="5m", help="the shards start this long after now (default 5m)")
    p.add_argument("--keep", default="30m", help="how long each pod keeps its results for kubectl cp (default 30m)")
    p.add_argument("--cpu", default="2", help="CPU request per pod (default 2; no limit)")
    p.add_argument("--memory", default="2Gi", help="memory request and limit per pod (default 2Gi)")
    p.add_argument("--collect-to", default="results/k8s", help="where the printed kubectl cp lines copy to")
    args = p.parse_args(own)
    from bench.cli import parse_duration

    try:
        if args.install and args.no_install:
            raise UsageError("give --install SPEC or --no-install, not both")
        start_at = time.time() + parse_duration(args.start_in, "--start-in")
        keep_s = int(parse_duration(args.keep, "--keep"))
        docs = job_manifests(name=args.name, namespace=args.namespace, shards=args.shards, bench_args=bench_args,
                             start_at=start_at, image=args.image, install=None if args.no_install else args.install,
                             api_key_secret=args.api_key_secret, cpu=args.cpu, memory=args.memory, keep_s=keep_s,
                             create_namespace=not args.no_namespace)
    except UsageError as exc:
        print(f"{p.prog}: error: {exc}", file=sys.stderr)
        return USAGE_EXIT
    sys.stdout.write(yaml.safe_dump_all(docs, sort_keys=False))
    print(f"# apply before {time.strftime('%H:%M:%S', time.localtime(start_at))} (the shards' --start-at), then:\n"
          + collect_commands(args.name, args.namespace, args.shards, args.collect_to), file=sys.stderr)
    return 0
