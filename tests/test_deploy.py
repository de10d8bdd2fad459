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

from export.steps.writers import SHARED_MODULES
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


def test_a_watchdog_runs_beside_each_server_as_the_tested_command() -> None:
    """The compose watchdog is `python -m export watchdog` (test_faults.py runs the same command
    against the bundled server): in the server's process namespace, with the admin key, on a
    server whose repository API can load models."""
    services = COMPOSE["services"]
    for watchdog, triton, export in (("watchdog", "triton", "export"), ("watchdog-cpu", "triton-cpu", "export-cpu")):
        service = services[watchdog]
        assert service["profiles"] == services[triton]["profiles"]
        assert service["pid"] == f"service:{triton}" and service["depends_on"] == [triton]
        assert service["image"] == services[export]["image"]  # built by the export service
        assert service["entrypoint"] == ["python", "-m", "export", "watchdog"]
        assert service["command"] == [f"--url={triton}:8000"]
        assert service["environment"]["TRITON_ADMIN_KEY"].startswith("${TRITON_ADMIN_KEY:?")
        assert service["restart"] == "unless-stopped"
        command = services[triton]["command"]
        assert "--model-control-mode=explicit" in command and "--load-model=*" in command


def test_the_image_installs_what_the_python_models_import() -> None:
    """Every third-party module a Python-backend model imports is installed by the image."""
    # `export`: a helper imports its sibling from the package, falling back to the bare name in a repository.
    provided = {"triton_python_backend_utils", "__future__", "export"} | set(sys.stdlib_module_names)
    helpers = {path.stem for path in (ROOT / "export/steps").glob("*/*.py")}
    helpers |= {path.stem for path in SHARED_MODULES}  # copied beside every step's model.py
    imported = set()
    for path in [*(ROOT / "export/steps").glob("*/*.py"), *SHARED_MODULES]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                imported.add(node.module.split(".")[0])
    needed = imported - provided - helpers
    assert needed == {"numpy", "tokenizers", "ftfy", "PIL", "onnxruntime", "qdrant_edge", "pymilvus"}
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


MILVUS = ("milvus", "milvus-etcd", "milvus-minio")


def test_milvus_profile_runs_milvus_standalone_with_its_etcd_and_minio() -> None:
    services = COMPOSE["services"]
    for name in MILVUS:
        assert services[name]["profiles"] == ["milvus"], name
        assert services[name]["healthcheck"]["test"][0] == "CMD", name
        for volume in services[name]["volumes"]:  # named volumes, declared
            assert volume.split(":")[0] in COMPOSE["volumes"], volume
    images = {name: services[name]["image"] for name in MILVUS}
    assert re.fullmatch(r"milvusdb/milvus:v2\.4\.\d+", images["milvus"])
    assert images["milvus-etcd"].startswith("quay.io/coreos/etcd:v3.5.")
    assert images["milvus-minio"].startswith("minio/minio:RELEASE.")
    milvus = services["milvus"]
    assert milvus["command"] == ["milvus", "run", "standalone"]
    assert milvus["depends_on"] == {
        "milvus-etcd": {"condition": "service_healthy"},
        "milvus-minio": {"condition": "service_healthy"},
    }
    assert milvus["environment"]["ETCD_ENDPOINTS"] == "milvus-etcd:2379"
    assert milvus["environment"]["MINIO_ADDRESS"] == "milvus-minio:9000"
    minio = services["milvus-minio"]["environment"]  # the same credentials on both sides
    assert milvus["environment"]["MINIO_ACCESS_KEY_ID"] == minio["MINIO_ROOT_USER"]
    assert milvus["environment"]["MINIO_SECRET_ACCESS_KEY"] == minio["MINIO_ROOT_PASSWORD"]
    assert "9091/healthz" in " ".join(milvus["healthcheck"]["test"])


def test_milvus_storage_is_private_and_milvus_reachable_from_triton() -> None:
    services = COMPOSE["services"]
    assert COMPOSE["networks"]["milvus-internal"] == {"internal": True}
    for name in ("milvus-etcd", "milvus-minio"):
        assert services[name]["networks"] == ["milvus-internal"] and "ports" not in services[name]
    assert services["milvus"]["networks"] == ["default", "milvus-internal"]  # triton is on default
    assert all(port.startswith("127.0.0.1:") for port in services["milvus"]["ports"])
    # Nothing outside the profile depends on it: the other profiles run without Milvus.
    for name, service in services.items():
        if name not in MILVUS:
            assert not set(service.get("depends_on") or ()) & set(MILVUS), name


def test_triton_cannot_depend_on_milvus_optionally_in_this_schema() -> None:
    """Why the triton services have no depends_on milvus: `required: false` (Compose 2.20+) is
    not in the schema the file is validated against."""
    validator = jsonschema.Draft201909Validator(json.loads((ROOT / ".tools" / "compose_spec.json").read_text()))
    optional = copy.deepcopy(COMPOSE)
    optional["services"]["triton"]["depends_on"]["milvus"] = {"condition": "service_healthy", "required": False}
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(optional)


def test_collections_volume_is_where_the_index_step_looks() -> None:
    """The embedded engine's data goes to collections/NAME beside the repository (outside it:
    the repository is mounted read-only): a named volume must be mounted exactly there."""
    from export.search.collection import COLLECTIONS_FOLDER
    from export.steps.index.actions import IndexSettings

    for name in ("triton", "triton-cpu"):
        service = COMPOSE["services"][name]
        (repository,) = [arg.split("=", 1)[1] for arg in service["command"] if arg.startswith("--model-repository=")]
        settings = IndexSettings("embedded", 384, "cosine", 10, 1000, data_dir=f"{COLLECTIONS_FOLDER}/docs")
        folder = settings.data_folder(Path(repository)).parent
        mounts = {target: source for source, target in (volume.split(":")[:2] for volume in service["volumes"])}
        assert mounts.get(str(folder)) == "collections", (name, folder, service["volumes"])
        assert "collections" in COMPOSE["volumes"]


def test_the_image_lets_the_server_write_collections() -> None:
    """A named volume starts as a copy of the image's folder: root-owned if the image had none,
    and the index step (run as triton-server) could not create its data."""
    dockerfile = (ROOT / "Dockerfile.triton").read_text().split("AS triton", 1)[1]
    assert re.search(r"mkdir -p [^\n]*/collections", dockerfile)
    assert re.search(r"chown triton-server [^\n]*/collections", dockerfile)
