"""Mutation testing (mutmut 3) of the modules where a wrong number or a wrong decision reaches users.

`make mutants` (or `python tests/mutants.py [TARGET ...] [--ref GIT_REF]`) copies the tree (the working
tree's tracked and untracked-but-not-ignored files, or a commit with --ref) to a directory of its own
per target, so mutated files never land in the checkout, configures mutmut there (one module, the tests
that exercise it: each mutant runs in well under a second) and prints killed/survived per target.
Results stay in that directory (`cd DIR/TARGET && mutmut results`, `mutmut show NAME`). docs/testing.md
has the scores and the review of the survivors.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# target -> (files to mutate, the tests that exercise them)
TARGETS: dict[str, tuple[list[str], list[str]]] = {
    "stats": (["bench/stats.py"], ["tests/bench/test_stats.py"]),
    "sse": (["bench/sse.py"], ["tests/bench/test_sse.py"]),
    # the decision logic and its literal tests only: the searches against the mock take 10-30 s per mutant, and
    # the flag tests through bench.run start a real run under a mutant that drops a check (reported "survived")
    "search": (["bench/search.py"], ["tests/bench/test_search.py", "-k",
                                    "not (servers_slots or capacity or error_limit or search_flags)"]),
    "server-metrics": (["bench/server_metrics.py"], ["tests/bench/test_server_metrics.py", "-k", "not a_run_"]),
    # load profiles and multi-turn sessions run in the scheduler too; their tests live next to their modules
    "scheduler": (["bench/scheduler.py"], ["tests/bench/test_scheduler.py", "tests/bench/test_profiles.py",
                                          "tests/bench/test_workloads.py"]),
    # in-thread workers (--workers 0) only: mutmut attributes no test to code run in a spawned process, and the
    # process tests (and the one with a 2 s busy parent) take 3-15 s each per mutant
    "workers": (["bench/workers.py"], ["tests/bench/test_workers.py", "-k",
                                      "not (own_share or that_dies or dying_mid_level or from_a_worker_process"
                                      " or outgrow_the_pipe)"]),
    "backend": (["bench/backend.py"], ["tests/bench/test_backend.py", "tests/bench/test_connection_reuse.py"]),
    # The gateway targets run the unit-level tests only (-k): the ones through a running gateway start a
    # server per mutant and would take an hour; they cover the same mapping end to end.
    "gateway-request": (["lambda/gateway/chat_request.py"],
                        ["tests/gateway/test_chat_request.py", "tests/gateway/test_model_check.py",
                         "-k", "not through_the_gateway"]),
    "gateway-upstream": (["lambda/gateway/sagemaker.py"],
                         ["tests/gateway/test_error_mapping.py", "-k", "not (is_504 or unreachable or through_the_gateway)"]),
    "gateway-auth": (["lambda/gateway/auth.py"], ["tests/gateway/test_auth_secret.py"]),
    "gateway-app": (["lambda/gateway/app.py", "lambda/gateway/relay.py", "lambda/gateway/metrics.py",
                     "lambda/gateway/errors.py"],
                    # in process (no uvicorn per mutant); test_streaming/test_faults cover the same through uvicorn
                    ["tests/gateway/test_relay.py", "tests/gateway/test_app_inprocess.py",
                     "tests/gateway/test_metrics.py", "-k", "not each_request_logs_one_valid_emf_line"]),
    "token-autoscaling": (["components/token_autoscaling.py"], ["tests/components/test_token_autoscaling_math.py",
                                                              "tests/components/test_aws_endpoint.py"]),
    "endpoint-monitoring": (["components/endpoint_monitoring.py"],
                            ["tests/components/test_endpoint_monitoring.py",
                             "tests/components/test_token_autoscaling_math.py", "tests/components/test_aws_endpoint.py"]),
    # test_breakeven.py runs `plan --from`, --api-price and --sagemaker-vpc through planner.main
    "planner": (["planning/planner.py"], ["tests/planning/test_planner.py", "tests/planning/test_breakeven.py"]),
    "breakeven": (["planning/breakeven.py"], ["tests/planning/test_breakeven.py"]),
    # the gate's decisions on literal runs; the test with two real bench runs against the mock takes 2 s a mutant
    "gate": (["bench/gate.py"], ["tests/bench/test_gate.py", "-k", "not real_runs_against_the_mock"]),
    "trust": (["bench/trust.py"], ["tests/bench/test_error_inclusive.py"]),
}

ALSO_COPY = ["bench", "planning", "components", "stacks", "local", "policy", "lambda", "gateway", "docs", "__main__.py", "Pulumi.yaml",
             "Pulumi.aws.yaml", "Pulumi.azure.yaml", "Pulumi.gcp.yaml"]


def copy_tree(dest: Path, ref: str | None) -> None:
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    if ref:
        with tempfile.TemporaryFile() as archive:
            subprocess.run(["git", "archive", "--format=tar", ref], cwd=ROOT, stdout=archive, check=True)
            archive.seek(0)
            with tarfile.open(fileobj=archive) as tar:
                tar.extractall(dest, filter="data")
        return
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for name in filter(None, files):
        source = ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)


def configure(tree: Path, paths: list[str], tests: list[str]) -> None:
    def toml_list(items: list[str]) -> str:
        return "[" + ", ".join(f'"{item}"' for item in items) + "]"

    with (tree / "pyproject.toml").open("a") as f:
        f.write(
            "\n[tool.mutmut]\n"
            f"source_paths = {toml_list(paths)}\n"
            # test files the tree has (an older commit may lack some), and any pytest option such as -k
            f"pytest_add_cli_args_test_selection = {toml_list([t for t in tests if not t.endswith('.py') or (tree / t).exists()])}\n"
            'pytest_add_cli_args = ["-p", "no:cacheprovider", "-q", "-x"]\n'
            f"also_copy = {toml_list([a for a in ALSO_COPY if (tree / a).exists()])}\n"
            # a mutant that hangs is stopped after 4x its tests' clean duration (mutmut's default 15x made one
            # hanging scheduler mutant cost 90 s of a 5 s test run)
            "timeout_multiplier = 4.0\n"
        )


def run_target(name: str, base: Path, ref: str | None, max_children: int) -> dict[str, int]:
    paths, tests = TARGETS[name]
    tree = base / name
    copy_tree(tree, ref)
    if any(path.startswith("lambda/gateway/") for path in paths):
        # The tests import the gateway as `gateway.*` (lambda/ is on pytest's pythonpath); mutmut names a
        # mutant after its file's path, so the copy holds the package at the root, where "." finds it first.
        shutil.move(tree / "lambda" / "gateway", tree / "gateway")
        paths = [path.removeprefix("lambda/") for path in paths]
    if not any(t.endswith(".py") and (tree / t).exists() for t in tests):
        return {"seconds": 0}  # none of its tests exist in this tree (an older --ref): nothing to measure
    configure(tree, paths, tests)
    mutmut = [sys.executable, "-m", "mutmut"]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    started = time.monotonic()
    with (tree / "mutmut-run.log").open("w") as log:
        subprocess.run([*mutmut, "run", "--max-children", str(max_children)], cwd=tree, stdout=log,
                       stderr=subprocess.STDOUT, env=env, check=False)
    results = subprocess.run([*mutmut, "results", "--all", "true"], cwd=tree, capture_output=True, text=True,
                             env=env, check=False).stdout
    counts: dict[str, int] = {}
    for line in results.splitlines():
        status = line.rsplit(":", 1)[-1].strip()
        if status:
            counts[status] = counts.get(status, 0) + 1
    counts["seconds"] = round(time.monotonic() - started)
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("targets", nargs="*", help=f"default: all of {', '.join(TARGETS)}")
    parser.add_argument("--ref", help="mutate this commit's tree instead of the working tree (a 'before' score)")
    parser.add_argument("--dir", default=os.environ.get("MUTANTS_DIR", "/tmp/llm-inference-mutants"))
    # at most 2: the machine is shared, and mutmut with more children only contends for the same cores
    parser.add_argument("--max-children", type=int, default=min(2, os.cpu_count() or 1))
    args = parser.parse_args(argv)
    unknown = [t for t in args.targets if t not in TARGETS]
    if unknown:
        parser.error(f"unknown target(s) {unknown}; known: {', '.join(TARGETS)}")
    base = Path(args.dir) / (args.ref or "worktree")
    print(f"{'target':22} {'killed':>7} {'survived':>8} {'other':>6} {'score':>6} {'time':>6}  (trees in {base})")
    for name in args.targets or list(TARGETS):
        counts = run_target(name, base, args.ref, args.max_children)
        killed, survived = counts.get("killed", 0), counts.get("survived", 0)
        other = sum(v for k, v in counts.items() if k not in ("killed", "survived", "seconds"))
        score = f"{100 * killed / (killed + survived):.0f}%" if killed + survived else "-"
        print(f"{name:22} {killed:7} {survived:8} {other:6} {score:>6} {counts['seconds']:5}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
