"""The post-deploy load tester. The capacity planner and the hardware/price catalog are `planning/`
(`python -m bench plan` and `recommend` run them); infrastructure imports `planning`, never `bench`.

Python API (what `python -m bench` runs):
    bench.run(["https://host/v1", "--concurrency", "8", "--requests", "100", "--out", "results/x"]) -> exit code
The results are in the --out directory (summary.json, requests.jsonl, report.md, PNG charts).
"""


def run(argv: list[str] | None = None) -> int:
    """Run `python -m bench` with these arguments in this process; returns its exit code."""
    from bench.cli import main

    return main(argv)
