"""The llama.cpp sources, as vendored in PyPI's llama-cpp-python sdist (pinned, hash-checked).

PyPI is the one registry a fresh machine can reach, and this sdist carries everything the local baseline
needs: the llama.cpp tree that builds `llama-server`, and vocab-only GGUF files for the model writer.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
# sha256 of llama_cpp_python-0.3.36.tar.gz on PyPI: a different file is refused, not built.
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"  # pragma: allowlist secret (sdist checksum)
SDIST_NAME = f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}"


class LocalSetupError(RuntimeError):
    """A local-baseline step failed; the message says what is wrong and how to fix it."""


def cache_root() -> Path:
    """Where built engines, sources and models live: outside the clone, shared by every checkout.

    LLM_INFERENCE_CACHE overrides it; otherwise $XDG_CACHE_HOME/llm-inference or ~/.cache/llm-inference.
    """
    override = os.environ.get("LLM_INFERENCE_CACHE")
    if override:
        return Path(override).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "llm-inference"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def llama_cpp_source_dir(root: Path | None = None, log=print) -> Path:
    """Return the vendored llama.cpp tree, downloading and unpacking the sdist on first use."""
    sources = (root or cache_root()) / "sources"
    tree = sources / SDIST_NAME
    vendored = tree / "vendor" / "llama.cpp"
    if (vendored / "CMakeLists.txt").is_file():
        return vendored
    sources.mkdir(parents=True, exist_ok=True)
    archive = sources / f"{SDIST_NAME}.tar.gz"
    if not archive.is_file():
        log(f"Downloading llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION} sources from PyPI (~75 MB)")
        _pip_download(sources)
    actual = sha256_of(archive)
    if actual != SDIST_SHA256:
        archive.unlink()
        raise LocalSetupError(
            f"{archive.name} has sha256 {actual}, expected {SDIST_SHA256}; the file was deleted, "
            "run again to download it afresh (check any PyPI mirror set in pip's configuration)."
        )
    staging = sources / f".{SDIST_NAME}.unpacking-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    with tarfile.open(archive) as tar:
        tar.extractall(staging, filter="data")
    shutil.rmtree(tree, ignore_errors=True)
    (staging / SDIST_NAME).rename(tree)
    shutil.rmtree(staging, ignore_errors=True)
    return vendored


def _pip_download(destination: Path) -> None:
    command = [
        # Only this package from source: with ":all:", pip also builds its build dependencies from source to
        # read the sdist's metadata, which took over 5 minutes with no pip cache (14 s this way).
        sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", "llama-cpp-python",
        f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}", "--dest", str(destination),
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise LocalSetupError(
            f"pip could not download llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION} from PyPI "
            f"(exit {result.returncode}); check network access to PyPI or pip's index-url.\n"
            + result.stderr.strip()[-2000:]
        )
