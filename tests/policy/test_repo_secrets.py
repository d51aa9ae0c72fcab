"""The repository holds no secrets: detect-secrets, with the settings of `.secrets.baseline` (the ones the
pre-commit hook uses), finds nothing in any tracked or untracked-but-not-ignored file.

A line that only looks like a secret (a secret's *name*, a dummy credential of a test) carries an inline
`# pragma: allowlist secret (reason)` comment, so the baseline itself lists no findings.
"""

from __future__ import annotations

import contextlib
import json
import random
import re
import string
import subprocess
from pathlib import Path

import pytest
import yaml
from detect_secrets import SecretsCollection
from detect_secrets.settings import default_settings, transient_settings

ROOT = Path(__file__).resolve().parents[2]
BASELINE = ROOT / ".secrets.baseline"
PRE_COMMIT = ROOT / ".pre-commit-config.yaml"

Finding = tuple[str, int, str]


def _is_text_file(path: Path) -> bool:
    if path.is_symlink() or not path.is_file():  # a tracked file deleted in the working tree, a link
        return False
    with path.open("rb") as fh:
        return b"\0" not in fh.read(8192)


def repo_files(root: Path = ROOT) -> list[str]:
    """Tracked files plus untracked ones git does not ignore, relative to root, text only."""
    names: set[str] = set()
    for extra in ([], ["--others", "--exclude-standard"]):
        listing = subprocess.run(
            ["git", "ls-files", "-z", *extra], cwd=root, capture_output=True, text=True, check=True
        ).stdout
        names.update(name for name in listing.split("\0") if name)
    names.discard(BASELINE.name)  # the scanner's own state; the hook skips it too
    return sorted(name for name in names if _is_text_file(root / name))


def baseline_settings() -> dict:
    baseline = json.loads(BASELINE.read_text())
    return {"plugins_used": baseline["plugins_used"], "filters_used": baseline["filters_used"]}


def scan(root: Path, files: list[str]) -> list[Finding]:
    """(file, line, type) of every potential secret in files (relative to root), baseline settings.

    In this process, one file after the other (about 6 s of one core for the repository): detect-secrets'
    own pool forks inside pytest, where the pack tests have gRPC loaded, and a spawn pool measured slower on
    two cores."""
    collection = SecretsCollection()
    with transient_settings(baseline_settings()), contextlib.chdir(root):
        for name in files:
            collection.scan_file(name)
    return sorted((name, secret.line_number, secret.type) for name, secret in collection)


def test_repository_has_no_secrets():
    files = repo_files()
    assert len(files) > 50 and "policy/__init__.py" in files, files
    findings = scan(ROOT, files)
    report = "\n".join(f"{name}:{line}: {kind}" for name, line, kind in findings)
    assert not findings, (
        "detect-secrets found potential secrets (make a real one a Pulumi secret; mark a false positive "
        f"with `# pragma: allowlist secret (reason)` on its line):\n{report}"
    )


def _fake_aws_credentials() -> tuple[str, str]:
    """Shaped like real ones, built at run time so that this file holds no secret-looking literal."""
    rng = random.Random(20240501)
    key_id = "AKIA" + "".join(rng.choices(string.ascii_uppercase + string.digits, k=16))
    secret = "".join(rng.choices(string.ascii_letters + string.digits + "/+", k=40))
    return key_id, secret


def test_scan_reports_a_planted_secret(tmp_path):
    key_id, secret_key = _fake_aws_credentials()
    (tmp_path / "deploy.py").write_text(
        "import boto3\n"
        "\n"
        f'client = boto3.client("s3", aws_access_key_id="{key_id}",\n'
        f'                      aws_secret_access_key="{secret_key}")\n'
    )
    (tmp_path / "id_rsa").write_text(
        "-----BEGIN " + "RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----\n"
    )
    (tmp_path / "allowed.py").write_text(
        f'EXAMPLE_KEY_ID = "{key_id}"  # pragma: allowlist secret (docs example)\n'
    )
    (tmp_path / "image.bin").write_bytes(b"\0\x01" + key_id.encode())
    files = sorted(p.name for p in tmp_path.iterdir() if _is_text_file(p))
    assert files == ["allowed.py", "deploy.py", "id_rsa"]

    findings = scan(tmp_path, files)

    assert ("deploy.py", 3, "AWS Access Key") in findings, findings
    assert ("deploy.py", 4, "AWS Access Key") in findings, findings  # the secret access key, by its name
    assert ("id_rsa", 1, "Private Key") in findings, findings
    assert not [f for f in findings if f[0] == "allowed.py"], findings  # the pragma is honoured


def test_pre_commit_runs_detect_secrets_with_the_baseline():
    config = yaml.safe_load(PRE_COMMIT.read_text())
    hooks = [
        (repo["repo"], repo.get("rev"), hook)
        for repo in config["repos"]
        for hook in repo["hooks"]
        if hook["id"] == "detect-secrets"
    ]
    assert len(hooks) == 1, config
    url, rev, hook = hooks[0]
    assert url == "https://github.com/Yelp/detect-secrets" and rev == "v1.5.0"
    args = hook.get("args", [])
    assert "--baseline" in args and args[args.index("--baseline") + 1] == BASELINE.name
    assert "--no-verify" in args  # offline, and a key reported revoked is still refused


def test_baseline_is_empty_and_uses_every_plugin():
    baseline = json.loads(BASELINE.read_text())
    assert baseline["version"] == "1.5.0"
    assert baseline["results"] == {}, "audit findings with an inline pragma, not in the baseline"
    with default_settings() as settings:
        default_plugins = set(settings.plugins)
    assert default_plugins <= {plugin["name"] for plugin in baseline["plugins_used"]}
    # No network verification (the scan stays offline, and a verified-false key is not waved through).
    assert not [f for f in baseline["filters_used"] if "verification" in f["path"]]


@pytest.mark.parametrize(
    "path", [".venv/lib/x.py", ".venv-checkov/x.py", "results/run.json", "build/lib/x.py"]
)
def test_baseline_excludes_local_trees(path):
    patterns = [
        pattern
        for entry in baseline_settings()["filters_used"]
        if entry["path"] == "detect_secrets.filters.regex.should_exclude_file"
        for pattern in entry["pattern"]
    ]
    assert patterns, "the baseline should exclude virtualenvs, results and build trees"
    assert any(re.search(pattern, path) for pattern in patterns), path
