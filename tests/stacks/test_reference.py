"""The README documents every config key Pulumi.yaml declares, and the stack files use only declared keys."""

from __future__ import annotations

import yaml

from stacks.reference import END, ROOT, START, render


def test_readme_config_reference_is_current():
    readme = (ROOT / "README.md").read_text()
    section = readme.split(START, 1)[1].split(END, 1)[0].strip()
    assert section == render(), "README config reference is stale: run `.venv/bin/python -m stacks.reference`"


def test_every_key_is_typed_with_default_and_description():
    config = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())["config"]
    for key, spec in config.items():
        assert spec.get("type") in ("string", "integer", "boolean", "array"), key
        assert "default" in spec, key
        assert len(str(spec.get("description", ""))) > 15, key


def test_stack_files_set_only_declared_or_secret_or_provider_keys():
    project = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())
    declared = set(project["config"])
    for stack_file in sorted(ROOT.glob("Pulumi.*.yaml")):
        values = (yaml.safe_load(stack_file.read_text()) or {}).get("config") or {}
        for key, value in values.items():
            namespace, _, name = key.partition(":")
            if namespace != project["name"]:
                continue  # provider config such as aws:region
            secure = isinstance(value, dict) and "secure" in value
            assert name in declared or secure, f"{stack_file.name}: {key} is not declared in Pulumi.yaml"
