"""The README's config reference, rendered from Pulumi.yaml so the two cannot drift.

`python -m stacks.reference` rewrites the README section; a test fails when it is stale.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- config-reference:start -->", "<!-- config-reference:end -->"


def render(project_file: Path = ROOT / "Pulumi.yaml") -> str:
    config = yaml.safe_load(project_file.read_text()).get("config") or {}
    rows = ["| key | type | default | description |", "|---|---|---|---|"]
    for key, spec in config.items():
        default = spec.get("default", "")
        shown = "" if default in ("", None) else f"`{str(default).lower() if isinstance(default, bool) else default}`"
        description = " ".join(str(spec.get("description", "")).split()).replace("|", "\\|")
        rows.append(f"| `{key}` | {spec.get('type', 'string')} | {shown} | {description} |")
    return "\n".join(rows)


def updated_readme(readme: str, table: str) -> str:
    head, _, rest = readme.partition(START)
    _, _, tail = rest.partition(END)
    if not rest:
        raise SystemExit(f"README.md has no {START} marker")
    return f"{head}{START}\n{table}\n{END}{tail}"


def main() -> int:
    readme = ROOT / "README.md"
    readme.write_text(updated_readme(readme.read_text(), render()))
    print(f"updated the config reference in {readme}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
