"""llama.cpp's `llama-server`: build it once from pinned sources, then run it as the local engine.

The build is CPU-only, Release, statically linked against llama/ggml, with the web UI off (so cmake
downloads nothing), and cached outside the clone under one directory per build configuration:
`<cache>/llama-server-<version>-<arch>-<portable|native>-<digest>/bin/llama-server`. A second run finds it
there and skips the compile (about 7 minutes on 2 cores: 395 s measured, build_seconds in its build-info.json).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from local._sources import LLAMA_CPP_PYTHON_VERSION, LocalSetupError, cache_root, llama_cpp_source_dir

BINARY_NAME = "llama-server"
APT_HINT = "sudo apt-get install -y build-essential cmake"

# Progress lines of the two generators cmake may drive: ninja "[12/345] ..." and make "[ 45%] ...".
_NINJA_PROGRESS = re.compile(r"^\[(\d+)/(\d+)\]")
_MAKE_PROGRESS = re.compile(r"^\[\s*(\d+)%\]")

ProgressCallback = Callable[[float, str], None]


@dataclass(frozen=True)
class EngineBuild:
    """One build configuration of llama-server; its cache directory is derived from these fields.

    portable=True compiles for a fixed instruction set (on x86-64: AVX2/FMA/F16C, any machine since
    2013) so the cached binary runs on another machine of the same kind; portable=False tunes for this
    CPU (-march=native) and is keyed on this CPU's feature flags.
    """

    portable: bool = True
    jobs: int = field(default_factory=lambda: os.cpu_count() or 1)

    def __post_init__(self) -> None:
        if not isinstance(self.jobs, int) or self.jobs < 1:
            raise ValueError(f"jobs must be a positive integer, got {self.jobs!r}")

    def cmake_flags(self) -> tuple[str, ...]:
        return (
            "-DCMAKE_BUILD_TYPE=Release",
            "-DBUILD_SHARED_LIBS=OFF",
            f"-DGGML_NATIVE={'OFF' if self.portable else 'ON'}",
            # Nothing is downloaded during the build: no web UI, no HTTPS client.
            "-DLLAMA_BUILD_UI=OFF",
            "-DLLAMA_USE_PREBUILT_UI=OFF",
            "-DLLAMA_OPENSSL=OFF",
            # CPU only, and only what llama-server needs.
            "-DGGML_CUDA=OFF",
            "-DGGML_VULKAN=OFF",
            "-DGGML_METAL=OFF",
            "-DLLAMA_BUILD_TESTS=OFF",
            "-DLLAMA_BUILD_EXAMPLES=OFF",
            "-DLLAMA_BUILD_TOOLS=ON",
            "-DLLAMA_BUILD_SERVER=ON",
        )

    @property
    def flavor(self) -> str:
        return "portable" if self.portable else "native"

    def cache_key(self) -> str:
        identity = "\n".join(self.cmake_flags())
        if not self.portable:
            identity += "\n" + _cpu_identity()
        digest = hashlib.sha256(identity.encode()).hexdigest()[:10]
        return f"{BINARY_NAME}-{LLAMA_CPP_PYTHON_VERSION}-{platform.machine().lower()}-{self.flavor}-{digest}"

    def install_dir(self, root: Path | None = None) -> Path:
        return (root or cache_root()) / self.cache_key()

    def binary_path(self, root: Path | None = None) -> Path:
        return self.install_dir(root) / "bin" / BINARY_NAME


def _cpu_identity() -> str:
    """The CPU feature flags a native build depends on (so another CPU does not reuse that binary)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return " ".join(sorted(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return platform.processor() or platform.machine()


def built_binary(build: EngineBuild | None = None, root: Path | None = None) -> Path | None:
    """The cached llama-server for this configuration, or None if it was not built yet."""
    path = (build or EngineBuild()).binary_path(root)
    return path if path.is_file() and os.access(path, os.X_OK) else None


def missing_build_tools(which: Callable[[str], str | None] | None = None) -> list[str]:
    """Names of the build tools absent from PATH (empty when a build can start)."""
    which = which or shutil.which
    missing = []
    if not which("cmake"):
        missing.append("cmake")
    if not any(which(name) for name in ("c++", "g++", "clang++")):
        missing.append("a C++ compiler (g++ or clang++)")
    if not any(which(name) for name in ("cc", "gcc", "clang")):
        missing.append("a C compiler (gcc or clang)")
    if not any(which(name) for name in ("ninja", "make")):
        missing.append("make or ninja")
    return missing


def require_build_tools(which: Callable[[str], str | None] | None = None) -> None:
    missing = missing_build_tools(which)
    if missing:
        raise LocalSetupError(
            f"Cannot build llama-server: missing {', '.join(missing)}. "
            f"On Debian/Ubuntu install them with `{APT_HINT}`."
        )


def build_engine(
    build: EngineBuild | None = None,
    *,
    root: Path | None = None,
    on_progress: ProgressCallback | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """Return the llama-server binary for `build`, compiling it first if the cache lacks it."""
    build = build or EngineBuild()
    cached = built_binary(build, root)
    if cached:
        return cached
    require_build_tools()
    source = llama_cpp_source_dir(root, log=log)
    install = build.install_dir(root)
    work = install.parent / f".{install.name}.building-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    build_log = work / "build.log"
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    started = time.monotonic()
    log(f"Building {BINARY_NAME} ({build.flavor}, {build.jobs} jobs) into {install}; log: {build_log}")
    with build_log.open("w") as log_file:
        _run_logged(
            ["cmake", "-S", str(source), "-B", str(work / "build"), *generator, *build.cmake_flags()],
            log_file, "cmake configure", build_log,
        )
        _run_logged(
            ["cmake", "--build", str(work / "build"), "--target", BINARY_NAME, "--parallel", str(build.jobs)],
            log_file, "cmake build", build_log, on_progress=on_progress,
        )
    produced = work / "build" / "bin" / BINARY_NAME
    if not produced.is_file():
        raise LocalSetupError(f"The build finished but {produced} does not exist; see {build_log}")
    (work / "bin").mkdir()
    shutil.copy2(produced, work / "bin" / BINARY_NAME)
    (work / "build-info.json").write_text(json.dumps({
        "llama_cpp_python": LLAMA_CPP_PYTHON_VERSION,
        "cmake_flags": list(build.cmake_flags()),
        "flavor": build.flavor,
        "machine": platform.machine(),
        "build_seconds": round(time.monotonic() - started, 1),
    }, indent=2) + "\n")
    shutil.rmtree(work / "build")  # the objects are ~100 MB; only the binary is reused
    shutil.rmtree(install, ignore_errors=True)
    work.rename(install)
    return build.binary_path(root)


def _run_logged(
    command: list[str],
    log_file,
    step: str,
    log_path: Path,
    on_progress: ProgressCallback | None = None,
) -> None:
    log_file.write("$ " + " ".join(command) + "\n")
    log_file.flush()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert process.stdout is not None
    for line in process.stdout:
        log_file.write(line)
        log_file.flush()  # so `tail -f` on the log shows where a slow build is
        if on_progress:
            fraction = _progress_fraction(line)
            if fraction is not None:
                on_progress(fraction, line.strip())
    if process.wait() != 0:
        log_file.flush()
        raise LocalSetupError(
            f"{step} of llama-server failed (exit {process.returncode}). Last lines of {log_path}:\n"
            + tail(log_path)
        )


def _progress_fraction(line: str) -> float | None:
    if match := _NINJA_PROGRESS.match(line):
        done, total = int(match[1]), int(match[2])
        return done / total if total else None
    if match := _MAKE_PROGRESS.match(line):
        return int(match[1]) / 100
    return None


def tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"


# ---------------------------------------------------------------------------------------------------
# Running the engine


@dataclass(frozen=True)
class ServerOptions:
    """How llama-server is started. Context is per slot: llama-server divides --ctx-size among slots."""

    model: Path
    port: int
    host: str = "127.0.0.1"
    parallel: int = 8
    ctx_per_slot: int = 512
    threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    alias: str = "local-llama"
    # Off: every request pays its prefill, as on a real endpoint with distinct prompts (fair TTFT).
    cache_prompt: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.port <= 65535:
            raise ValueError(f"port must be within 1..65535, got {self.port}")
        for name in ("parallel", "ctx_per_slot", "threads"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")

    def command(self, binary: Path) -> list[str]:
        return [
            str(binary),
            "--model", str(self.model),
            "--alias", self.alias,
            "--host", self.host,
            "--port", str(self.port),
            "--parallel", str(self.parallel),
            "--ctx-size", str(self.parallel * self.ctx_per_slot),
            "--threads", str(self.threads),
            "--threads-http", str(max(2, self.parallel)),
            "--cont-batching",
            "--cache-prompt" if self.cache_prompt else "--no-cache-prompt",
            "--no-webui",
            "--metrics",
        ]

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def require_free_port(host: str, port: int, what: str) -> None:
    if port_in_use(host, port):
        raise LocalSetupError(
            f"Port {port} on {host} is already in use, so {what} cannot listen there. "
            f"Stop whatever holds it (`ss -ltnp 'sport = :{port}'` shows it) or choose another port."
        )


def wait_healthy(url: str, process: subprocess.Popen, log_path: Path, what: str, timeout_s: float) -> None:
    """Poll `url` until it answers 200; fail with the log tail if the process exits or never gets there."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    with httpx.Client(timeout=2.0, trust_env=False) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise LocalSetupError(
                    f"{what} exited with code {process.returncode} before becoming healthy. "
                    f"Last lines of {log_path}:\n{tail(log_path)}"
                )
            try:
                response = client.get(url)
                if response.status_code == 200:
                    return
                last = f"HTTP {response.status_code}"
            except httpx.TransportError as error:
                last = type(error).__name__
            time.sleep(0.1)
    raise LocalSetupError(
        f"{what} did not become healthy at {url} within {timeout_s:.0f}s (last: {last}). "
        f"Last lines of {log_path}:\n{tail(log_path)}"
    )


class LlamaServer:
    """A running llama-server process; use `with LlamaServer.start(...) as server:` to stop it reliably."""

    def __init__(self, process: subprocess.Popen, options: ServerOptions, log_path: Path) -> None:
        self.process = process
        self.options = options
        self.log_path = log_path

    @property
    def base_url(self) -> str:
        return self.options.base_url

    @property
    def openai_url(self) -> str:
        return self.options.base_url + "/v1"

    @classmethod
    def start(
        cls,
        binary: Path,
        options: ServerOptions,
        log_path: Path,
        *,
        ready_timeout_s: float = 120.0,
    ) -> LlamaServer:
        if not options.model.is_file():
            raise LocalSetupError(f"Model file {options.model} does not exist.")
        require_free_port(options.host, options.port, "llama-server")
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("w") as log_file:
            process = subprocess.Popen(
                options.command(binary), stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
            )
        server = cls(process, options, log_path)
        try:
            server.wait_healthy(ready_timeout_s)
        except BaseException:
            server.stop()
            raise
        return server

    def wait_healthy(self, timeout_s: float) -> None:
        wait_healthy(self.base_url + "/health", self.process, self.log_path, "llama-server", timeout_s)

    def stop(self, grace_s: float = 10.0) -> None:
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(grace_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> LlamaServer:
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


@contextlib.contextmanager
def running_engine(
    binary: Path, options: ServerOptions, log_path: Path, *, ready_timeout_s: float = 120.0
) -> Iterator[LlamaServer]:
    server = LlamaServer.start(binary, options, log_path, ready_timeout_s=ready_timeout_s)
    try:
        yield server
    finally:
        server.stop()


def build_with_progress(build: EngineBuild, console) -> Path:
    """`build_engine` with a rich progress bar on `console` (a cached build returns at once)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("[bold]building llama-server"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(), console=console, transient=True,
    ) as progress:
        task = progress.add_task("build", total=1.0)
        return build_engine(
            build, on_progress=lambda fraction, _line: progress.update(task, completed=fraction), log=console.print
        )


def main(argv: list[str] | None = None) -> int:
    """`python -m local.engine [--native]`: build (or find) llama-server and print its path."""
    import argparse

    from rich.console import Console

    parser = argparse.ArgumentParser(prog="python -m local.engine", description=main.__doc__)
    parser.add_argument("--native", action="store_true", help="tune for this CPU instead of a portable build")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel compile jobs")
    args = parser.parse_args(argv)
    console = Console(stderr=True)
    try:
        binary = build_with_progress(EngineBuild(portable=not args.native, jobs=args.jobs), console)
    except LocalSetupError as error:
        console.print(f"[red]error:[/red] {error}")
        return 1
    print(binary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
