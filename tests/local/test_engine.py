"""llama-server: build configuration, cache keys, command lines and the errors a user sees."""

from __future__ import annotations

import os
import socket
import stat
import sys
from pathlib import Path

import pytest

from local import engine
from local._sources import SDIST_NAME, LocalSetupError, cache_root, llama_cpp_source_dir
from local.engine import EngineBuild, LlamaServer, ServerOptions, built_binary, missing_build_tools


def test_portable_build_downloads_nothing_and_is_cpu_only_static_release():
    flags = EngineBuild(portable=True).cmake_flags()
    for flag in ("-DLLAMA_BUILD_UI=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF", "-DLLAMA_OPENSSL=OFF",
                 "-DGGML_NATIVE=OFF", "-DBUILD_SHARED_LIBS=OFF", "-DCMAKE_BUILD_TYPE=Release",
                 "-DGGML_CUDA=OFF", "-DLLAMA_BUILD_TESTS=OFF"):
        assert flag in flags
    assert "-DGGML_NATIVE=ON" in EngineBuild(portable=False).cmake_flags()


def test_cache_key_names_version_arch_and_flavor_and_depends_on_flags(tmp_path):
    portable, native = EngineBuild(portable=True), EngineBuild(portable=False)
    assert portable.cache_key().startswith("llama-server-0.3.36-")
    assert "-portable-" in portable.cache_key() and "-native-" in native.cache_key()
    assert portable.cache_key() != native.cache_key()
    # The job count changes how fast, not what is built: same cache entry.
    assert EngineBuild(jobs=1).cache_key() == EngineBuild(jobs=8).cache_key()
    assert portable.binary_path(tmp_path) == tmp_path / portable.cache_key() / "bin" / "llama-server"


def test_cache_lives_outside_the_clone_and_can_be_moved(monkeypatch, tmp_path):
    monkeypatch.delenv("LLM_INFERENCE_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "llm-inference"
    monkeypatch.setenv("LLM_INFERENCE_CACHE", str(tmp_path / "elsewhere"))
    assert cache_root() == tmp_path / "elsewhere"


def test_a_cached_binary_is_reused_without_building(tmp_path, monkeypatch):
    build = EngineBuild()
    binary = build.binary_path(tmp_path)
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\n")
    binary.chmod(binary.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setattr(engine, "require_build_tools", lambda: pytest.fail("a cached build must not rebuild"))
    assert built_binary(build, tmp_path) == binary
    assert engine.build_engine(build, root=tmp_path) == binary


def test_missing_tools_are_named_with_the_debian_packages(tmp_path, monkeypatch):
    assert missing_build_tools(lambda name: None) == [
        "cmake", "a C++ compiler (g++ or clang++)", "a C compiler (gcc or clang)", "make or ninja"]
    assert missing_build_tools(lambda name: f"/usr/bin/{name}") == []
    monkeypatch.setattr(engine.shutil, "which", lambda name: None if name == "cmake" else f"/usr/bin/{name}")
    monkeypatch.setattr(engine, "llama_cpp_source_dir", lambda *a, **k: pytest.fail("must stop before fetching"))
    with pytest.raises(LocalSetupError) as error:
        engine.build_engine(EngineBuild(), root=tmp_path)
    assert "missing cmake" in str(error.value)
    assert "apt-get install -y build-essential cmake" in str(error.value)


def test_a_tampered_source_archive_is_refused_and_deleted(tmp_path):
    archive = tmp_path / "sources" / f"{SDIST_NAME}.tar.gz"
    archive.parent.mkdir(parents=True)
    archive.write_bytes(b"not the sdist")
    with pytest.raises(LocalSetupError, match="expected 832db069"):
        llama_cpp_source_dir(tmp_path, log=lambda _: None)
    assert not archive.exists()


@pytest.mark.parametrize(
    ("line", "fraction"),
    [("[12/48] Building CXX object src/llama.o", 0.25), ("[ 45%] Building C object ggml.o", 0.45),
     ("-- Configuring done", None)],
)
def test_build_progress_is_read_from_ninja_and_make_lines(line, fraction):
    assert engine._progress_fraction(line) == fraction


def test_server_command_line(tmp_path):
    options = ServerOptions(model=tmp_path / "m.gguf", port=8123, parallel=4, ctx_per_slot=1024, threads=2)
    command = options.command(Path("/opt/llama-server"))
    assert command[0] == "/opt/llama-server"
    pairs = dict(zip(command[1::2], command[2::2], strict=False))
    assert pairs["--model"] == str(tmp_path / "m.gguf")
    assert pairs["--host"] == "127.0.0.1" and pairs["--port"] == "8123"
    assert pairs["--parallel"] == "4"
    assert command[command.index("--ctx-size") + 1] == "4096"  # shared by the 4 slots
    assert "--no-cache-prompt" in command and "--no-webui" in command and "--cont-batching" in command
    assert "--cache-prompt" in ServerOptions(model=Path("m"), port=1, cache_prompt=True).command(Path("x"))
    assert options.base_url == "http://127.0.0.1:8123"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"port": 0}, "port must be within 1..65535"), ({"parallel": 0}, "parallel must be a positive integer"),
     ({"ctx_per_slot": -1}, "ctx_per_slot must be a positive integer")],
)
def test_bad_server_options_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ServerOptions(**({"model": Path("m"), "port": 8080} | kwargs))


def test_a_port_in_use_is_reported_with_how_to_find_the_holder(tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        model = tmp_path / "m.gguf"
        model.write_bytes(b"")
        with pytest.raises(LocalSetupError, match=f"Port {port} on 127.0.0.1 is already in use") as error:
            LlamaServer.start(Path(sys.executable), ServerOptions(model=model, port=port), tmp_path / "log")
    assert "ss -ltnp" in str(error.value)


def fake_engine(tmp_path: Path, script: str) -> Path:
    """A stand-in executable for the failure paths only: it takes llama-server's arguments and misbehaves."""
    path = tmp_path / "fake-llama-server"
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)
    return path


def test_an_engine_that_exits_shows_its_log_tail(tmp_path):
    binary = fake_engine(tmp_path, 'echo "loading model"\necho "error: unknown model architecture" >&2\nexit 3\n')
    model = tmp_path / "m.gguf"
    model.write_bytes(b"")
    options = ServerOptions(model=model, port=engine.free_port())
    with pytest.raises(LocalSetupError) as error:
        LlamaServer.start(binary, options, tmp_path / "engine.log", ready_timeout_s=10)
    message = str(error.value)
    assert "exited with code 3 before becoming healthy" in message
    assert "error: unknown model architecture" in message


def test_an_engine_that_never_gets_healthy_is_stopped_and_its_log_shown(tmp_path):
    binary = fake_engine(tmp_path, 'echo "warming up forever"\nexec sleep 60\n')
    model = tmp_path / "m.gguf"
    model.write_bytes(b"")
    options = ServerOptions(model=model, port=engine.free_port())
    with pytest.raises(LocalSetupError) as error:
        LlamaServer.start(binary, options, tmp_path / "engine.log", ready_timeout_s=1)
    assert "did not become healthy" in str(error.value) and "warming up forever" in str(error.value)


def test_a_missing_model_file_is_named(tmp_path):
    options = ServerOptions(model=tmp_path / "absent.gguf", port=engine.free_port())
    with pytest.raises(LocalSetupError, match="absent.gguf does not exist"):
        LlamaServer.start(Path(os.devnull), options, tmp_path / "log")
