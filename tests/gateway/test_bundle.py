"""The Lambda code archive: app, start script and dependencies, importable on its own."""

from __future__ import annotations

import stat
import subprocess
import sys
import zipfile

from components.streaming_gateway import gateway_bundle


def test_bundle_holds_the_app_and_its_dependencies_and_imports_alone(tmp_path):
    bundle = gateway_bundle()
    assert gateway_bundle() == bundle, "rebuilt only when its content changes"
    with zipfile.ZipFile(bundle) as archive:
        names = set(archive.namelist())
        run_sh = archive.getinfo("run.sh")
        assert stat.S_IMODE(run_sh.external_attr >> 16) == 0o755, "the handler script must be executable"
        assert "gateway.app:app" in archive.read("run.sh").decode()
        archive.extractall(tmp_path)
    assert {"gateway/app.py", "starlette/__init__.py", "uvicorn/__init__.py", "botocore/__init__.py",
            "anyio/__init__.py", "h11/__init__.py"} <= names
    assert any(n.startswith("botocore/data/sagemaker-runtime/") for n in names)
    assert not any(n.startswith("botocore/data/ec2/") for n in names), "unused service models are left out"
    assert not any("__pycache__" in n for n in names)
    # -S: no site-packages, so only the archive and the standard library can satisfy the imports.
    script = (
        f"import sys; sys.path.insert(0, {str(tmp_path)!r}); "
        "import gateway.app, gateway.sagemaker, uvicorn, botocore.session; "
        "from gateway.settings import Settings; "
        "s = Settings(endpoint_name='e', region='us-east-1', model_id='m'); "
        "gateway.app.create_app(s); "
        "c = botocore.session.get_session().create_client('sagemaker-runtime', region_name='us-east-1', "
        "aws_access_key_id='a', aws_secret_access_key='b'); "
        "assert hasattr(c, 'invoke_endpoint_with_response_stream'); "
        "assert all(not m.__file__ or m.__file__.startswith(sys.base_prefix) or m.__file__.startswith("
        f"{str(tmp_path)!r}) for m in list(sys.modules.values()) if getattr(m, '__file__', None))"
    )
    result = subprocess.run([sys.executable, "-S", "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_every_entry_is_unix_made_with_its_mode():
    """create_system 3 (Unix) on every OS, so unzip applies the modes: run.sh stays executable."""
    with zipfile.ZipFile(gateway_bundle()) as archive:
        for info in archive.infolist():
            assert info.create_system == 3, info.filename
            assert stat.S_ISREG(info.external_attr >> 16) and stat.S_IMODE(info.external_attr >> 16) in (0o644, 0o755)
