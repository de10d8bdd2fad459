"""Deployment files, validated as far as this machine allows (no GPU, no Docker engine):
linters, the Compose Specification's schema, what the files promise, and the dashboard's
metrics against a live server's /metrics."""

from __future__ import annotations

import ast
import copy
import json
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.helpers import embed_grpc

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
DASHBOARD = json.loads((ROOT / "monitoring/grafana/dashboards/triton-embeddings.json").read_text())


def test_dockerfile_is_clean_under_hadolint() -> None:
    done = subprocess.run([BIN / "hadolint", ROOT / "Dockerfile.triton"], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_yaml_is_clean_under_yamllint() -> None:
    files = [ROOT / "docker-compose.yml", *sorted((ROOT / "monitoring").rglob("*.yml"))]
    done = subprocess.run([BIN / "yamllint", "--strict", *files], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stdout


def test_compose_file_follows_the_compose_specification() -> None:
    validator = jsonschema.Draft201909Validator(json.loads((ROOT / ".tools" / "compose_spec.json").read_text()))
    validator.validate(COMPOSE)
    broken = copy.deepcopy(COMPOSE)
    broken["services"]["triton"]["deploy"]["resources"]["reservations"]["devices"] = "all"
    with pytest.raises(jsonschema.ValidationError):  # the schema does constrain the file
        validator.validate(broken)


def test_compose_file_exports_before_it_serves() -> None:
    services = COMPOSE["services"]
    for triton, export in (("triton", "export"), ("triton-cpu", "export-cpu")):
        assert services[triton]["depends_on"] == {export: {"condition": "service_completed_successfully"}}
        assert "models:/models:ro" in services[triton]["volumes"] and "models:/models" in services[export]["volumes"]
        assert "huggingface:/cache/huggingface" in services[export]["volumes"]
        assert services[triton]["shm_size"] == "2gb"
        assert services[triton]["ports"] == ["8000:8000", "8001:8001", "8002:8002"]
        command = " ".join(services[triton]["command"])
        assert "--http-restricted-api=model-repository" in command and "admin-key=${TRITON_ADMIN_KEY:?" in command
        assert "--cache-config=local,size=" in command  # what --response-cache pipelines need
    (gpu,) = services["triton"]["deploy"]["resources"]["reservations"]["devices"]
    assert gpu["driver"] == "nvidia" and gpu["capabilities"] == ["gpu"]
    assert "deploy" not in services["triton-cpu"]
    assert "--runtime=onnxruntime" in services["export"]["command"]
    assert "--runtime=python" in services["export-cpu"]["command"]
    profiles = {name: service.get("profiles") for name, service in services.items()}
    assert profiles["prometheus"] == profiles["grafana"] == ["monitoring"]


def test_the_image_installs_what_the_python_models_import() -> None:
    """Every third-party module a Python-backend model imports is installed by the image."""
    # `export`: a helper imports its sibling from the package, falling back to the bare name in a repository.
    provided = {"triton_python_backend_utils", "__future__", "export"} | set(sys.stdlib_module_names)
    helpers = {path.stem for path in (ROOT / "export/steps").glob("*/*.py")}
    imported = set()
    for path in (ROOT / "export/steps").glob("*/*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                imported.add(node.module.split(".")[0])
    needed = imported - provided - helpers
    assert needed == {"numpy", "tokenizers", "ftfy", "PIL", "onnxruntime", "qdrant_edge"}
    dockerfile = (ROOT / "Dockerfile.triton").read_text().split("AS triton", 1)[1]
    installed = set(re.findall(r'"([A-Za-z0-9_-]+)==', dockerfile))
    distributions = {"PIL": "pillow", "qdrant_edge": "qdrant-edge-py"}
    assert {distributions.get(module, module) for module in needed} <= installed


def test_healthcheck_asks_for_readiness() -> None:
    assert "/v2/health/ready" in (ROOT / "Dockerfile.triton").read_text()


def dashboard_queries() -> list[str]:
    return [target["expr"] for panel in DASHBOARD["panels"] for target in panel["targets"]]


def test_dashboard_shows_what_an_operator_watches() -> None:
    titles = " ".join(panel["title"].lower() for panel in DASHBOARD["panels"])
    for topic in ("throughput", "latency p50 / p99", "queue time", "batch size"):
        assert topic in titles
    ids = [panel["id"] for panel in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids))
    provider = yaml.safe_load((ROOT / "monitoring/grafana/provisioning/dashboards/dashboards.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    scrape = yaml.safe_load((ROOT / "monitoring/prometheus.yml").read_text())["scrape_configs"][0]
    assert "triton:8002" in scrape["static_configs"][0]["targets"]


@pytest.mark.parametrize("query", dashboard_queries())
def test_dashboard_metrics_exist_on_a_live_server(server, grpc_client, query: str) -> None:
    embed_grpc(grpc_client, "all-MiniLM-L6-v2", ["so that every per-model series exists"])
    with urllib.request.urlopen(server.options.metrics_url, timeout=30) as response:
        lines = response.read().decode().splitlines()
    exposed = {line.split("{")[0].split(" ")[0] for line in lines if not line.startswith("#")}
    for metric in re.findall(r"\b(nv_[a-z_]+)", query):
        if metric != "nv_gpu_utilization":  # only where there is a GPU
            assert metric in exposed, metric
