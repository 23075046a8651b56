"""scripts/*.sh: shellcheck, bash -n, and the host-service scripts run against test doubles.

whisper.cpp's server and Ollama are replaced by in-test HTTP servers that answer their
wire format (`GET /` and `GET /api/tags`); `curl` stays real except in the download test,
where a recording stand-in keeps the test off the network.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import free_port

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = sorted((REPO / "scripts").glob("*.sh"))
START = REPO / "scripts" / "start-host-services.sh"
DOWNLOAD = REPO / "scripts" / "download-models.sh"

# A stand-in server process: whisper.cpp (`/` page, POST /inference) or Ollama (`/api/tags`).
DOUBLE = textwrap.dedent(
    """
    import http.server, json, sys
    kind, port, models = sys.argv[1], int(sys.argv[2]), sys.argv[3:]

    class Handler(http.server.BaseHTTPRequestHandler):
        def _send(self, code, body, ctype):
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if kind == "whisper" and self.path == "/":
                self._send(200, b"<html><title>Whisper.cpp Server</title></html>", "text/html")
            elif kind == "ollama" and self.path == "/api/tags":
                tags = {"models": [{"name": m, "model": m, "size": 1} for m in models]}
                self._send(200, json.dumps(tags, indent=2).encode(), "application/json")
            elif kind == "ollama" and self.path == "/":
                self._send(200, b"Ollama is running", "text/plain")
            else:
                self._send(404, b"not found", "text/plain")

        def log_message(self, *args):
            pass

    http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
    """
)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shellcheck_is_clean(script: Path) -> None:
    assert shutil.which("shellcheck"), "Debian's shellcheck is not installed"
    done = subprocess.run(
        ["shellcheck", "--external-sources", "--severity=style", str(script)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_bash_parses(script: Path) -> None:
    subprocess.run(["bash", "-n", str(script)], check=True, timeout=30)


@contextlib.contextmanager
def double(kind: str, port: int, *models: str) -> Iterator[None]:
    """Run one stand-in server on 127.0.0.1:port until the block ends."""
    process = subprocess.Popen([sys.executable, "-c", DOUBLE, kind, str(port), *models])
    try:
        wait_for_port(port, process)
        yield
    finally:
        process.kill()
        process.wait(timeout=10)


def wait_for_port(port: int, process: subprocess.Popen[bytes]) -> None:
    import socket
    import time

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        assert process.poll() is None, "test double exited"
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port}")


def script_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """Environment that pins every setting the scripts read (a developer's .env cannot leak in)."""
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path / "home"),
        "WHISPER_MODEL": "ggml-large-v3-turbo.bin",
        "OLLAMA_MODEL": "llama3.2:3b",
        "PIPER_VOICE": "en_US-lessac-medium",
        "MODELS_DIR": str(tmp_path / "models"),
        "RUN_DIR": str(tmp_path / "run"),
        "WHISPER_PORT": str(free_port()),
        "OLLAMA_PORT": str(free_port()),
        "BIND_HOST": "127.0.0.1",
        "STARTUP_TIMEOUT_S": "20",
        "WHISPER_SERVER_BIN": str(tmp_path / "absent" / "whisper-server"),
        "OLLAMA_BIN": str(tmp_path / "absent" / "ollama"),
    }
    env.update(extra)
    return env


def run_start(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(START)], env=env, capture_output=True, text=True, timeout=90)


def test_start_reports_everything_missing_and_fails(tmp_path: Path) -> None:
    env = script_env(tmp_path)
    done = run_start(env)
    assert done.returncode == 1, done.stdout + done.stderr
    err = done.stderr
    assert "3 problem(s)" in err
    assert "whisper.cpp server binary" in err and "cmake --build build" in err
    assert f"{env['MODELS_DIR']}/ggml-large-v3-turbo.bin not found" in err
    assert "scripts/download-models.sh" in err
    assert "Ollama binary" in err and "ollama.com/install.sh" in err


def test_start_accepts_running_services_with_the_model(tmp_path: Path) -> None:
    env = script_env(tmp_path)
    with (
        double("whisper", int(env["WHISPER_PORT"])),
        double("ollama", int(env["OLLAMA_PORT"]), "nomic-embed-text:latest", "llama3.2:3b"),
    ):
        done = run_start(env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "whisper.cpp server already answers" in done.stdout
    assert "Ollama has llama3.2:3b" in done.stdout
    assert "host services ready" in done.stdout


def test_start_names_an_ollama_model_that_is_not_pulled(tmp_path: Path) -> None:
    env = script_env(tmp_path, OLLAMA_MODEL="llama3.2:3b")
    with (
        double("whisper", int(env["WHISPER_PORT"])),
        double("ollama", int(env["OLLAMA_PORT"]), "llama3.2:1b"),
    ):
        done = run_start(env)
    assert done.returncode == 1
    assert "run 'ollama pull llama3.2:3b'" in done.stderr
    assert "1 problem(s)" in done.stderr


def stub(path: Path, body: str) -> Path:
    """An executable Python stand-in for a binary."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!{sys.executable}\n{textwrap.dedent(body)}")
    path.chmod(0o755)
    return path


def kill_pid_files(run_dir: Path) -> None:
    for pid_file in run_dir.glob("*.pid"):
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)


def test_start_launches_both_servers_with_the_spec_settings(tmp_path: Path) -> None:
    """Stand-in binaries record their arguments and serve the wire format once started."""
    bin_dir = tmp_path / "bin"
    record = tmp_path / "argv.jsonl"
    launcher = f"""
        import json, os, sys
        with open({str(record)!r}, "a") as f:
            record = {{"argv": sys.argv, "OLLAMA_HOST": os.environ.get("OLLAMA_HOST")}}
            f.write(json.dumps(record) + "\\n")
        """
    whisper = stub(
        bin_dir / "whisper-server",
        launcher
        + f"""
        a = sys.argv
        assert os.path.isfile(a[a.index("--model") + 1]), "model path"
        port = a[a.index("--port") + 1]
        os.execv(sys.executable, [sys.executable, "-c", {DOUBLE!r}, "whisper", port])
        """,
    )
    ollama = stub(
        bin_dir / "ollama",
        launcher
        + f"""
        port = os.environ["OLLAMA_HOST"].rsplit(":", 1)[1]
        os.execv(sys.executable, [sys.executable, "-c", {DOUBLE!r}, "ollama", port, "llama3.2:3b"])
        """,
    )
    env = script_env(tmp_path, WHISPER_SERVER_BIN="whisper-server", OLLAMA_BIN="ollama")
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    model = Path(env["MODELS_DIR"]) / "ggml-large-v3-turbo.bin"
    model.parent.mkdir(parents=True)
    model.write_bytes(b"ggml")
    try:
        done = run_start(env)
    finally:
        kill_pid_files(Path(env["RUN_DIR"]))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "whisper.cpp server answers on" in done.stdout
    assert "Ollama answers on" in done.stdout
    calls = [json.loads(line) for line in record.read_text().splitlines()]
    by_binary = {Path(c["argv"][0]).name: c for c in calls}
    assert by_binary["whisper-server"]["argv"][1:] == [
        "--host",
        "127.0.0.1",
        "--port",
        env["WHISPER_PORT"],
        "--model",
        str(model),
    ]
    assert by_binary["ollama"]["argv"][1:] == ["serve"]
    assert by_binary["ollama"]["OLLAMA_HOST"] == f"127.0.0.1:{env['OLLAMA_PORT']}"
    assert whisper.exists() and ollama.exists()


def test_download_fetches_each_model_once(tmp_path: Path) -> None:
    """A recording `curl` stand-in: writes a file for -o, answers Ollama's /api/tags check."""
    bin_dir = tmp_path / "bin"
    log = tmp_path / "calls.jsonl"
    recorder = f"""
        import json, sys
        with open({str(log)!r}, "a") as f:
            f.write(json.dumps(sys.argv) + "\\n")
        """
    stub(
        bin_dir / "curl",
        recorder
        + """
        a = sys.argv
        if "-o" in a and not a[-1].endswith("/api/tags"):
            with open(a[a.index("-o") + 1], "w") as out:
                out.write("data from " + a[-1])
        """,
    )
    stub(bin_dir / "ollama", recorder)
    env = script_env(tmp_path, OLLAMA_BIN="ollama", HF_BASE="https://hf.example")
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    for _ in range(2):
        done = subprocess.run(
            ["bash", str(DOWNLOAD)], env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stdout + done.stderr
    models = Path(env["MODELS_DIR"])
    expected = {
        models / "ggml-large-v3-turbo.bin": (
            "https://hf.example/ggerganov/whisper.cpp/resolve/main/ggml-large-v3-turbo.bin"
        ),
        models / "piper" / "en_US-lessac-medium.onnx": (
            "https://hf.example/rhasspy/piper-voices/resolve/main/"
            "en/en_US/lessac/medium/en_US-lessac-medium.onnx"
        ),
        models / "piper" / "en_US-lessac-medium.onnx.json": (
            "https://hf.example/rhasspy/piper-voices/resolve/main/"
            "en/en_US/lessac/medium/en_US-lessac-medium.onnx.json"
        ),
    }
    for path, url in expected.items():
        assert path.read_text() == f"data from {url}"
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    downloads = [c[-1] for c in calls if Path(c[0]).name == "curl" and "-o" in c]
    assert sorted(u for u in downloads if "/api/tags" not in u) == sorted(expected.values())
    pulls = [c[1:] for c in calls if Path(c[0]).name == "ollama"]
    assert pulls == [["pull", "llama3.2:3b"], ["pull", "llama3.2:3b"]]
    assert "have " in done.stdout


def test_download_failure_leaves_no_partial_file(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    stub(
        bin_dir / "curl",
        """
        import sys
        a = sys.argv
        if "-o" in a:
            open(a[a.index("-o") + 1], "w").write("half")
        sys.exit(22)
        """,
    )
    env = script_env(tmp_path)
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    done = subprocess.run(
        ["bash", str(DOWNLOAD), "whisper", "piper"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "failed: whisper piper" in done.stderr
    assert not any(Path(env["MODELS_DIR"]).rglob("*.*")), list(Path(env["MODELS_DIR"]).rglob("*"))
