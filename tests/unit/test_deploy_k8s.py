"""deploy/k8s against the code: real settings and roles, probes on the ports and paths the
roles serve, resources and a restricted security context everywhere, consistent selectors."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from service.segmentation.rules import parse_rules
from service.settings import ApiSettings, Settings
from tests.support.deploy import (
    K8S,
    PROBE_PATHS,
    ROOT,
    api_port,
    api_serves,
    check_env,
    check_segments_args,
    load_yaml,
    load_yaml_documents,
    parse_dockerfile,
    segments_role,
    settings_from_env,
)

KUSTOMIZATION = load_yaml(K8S / "kustomization.yaml")
MANIFESTS: dict[str, list[dict[str, Any]]] = {
    path.name: load_yaml_documents(path)
    for path in sorted(K8S.glob("*.yaml"))
    if path.name != "kustomization.yaml"
}
OBJECTS = [obj for docs in MANIFESTS.values() for obj in docs]


def _objects(kind: str, objects: list[dict[str, Any]] = OBJECTS) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


DEPLOYMENTS = _objects("Deployment")
WORKLOADS = {**DEPLOYMENTS, **_objects("Job")}


def _pod(workload: dict[str, Any]) -> dict[str, Any]:
    pod: dict[str, Any] = workload["spec"]["template"]["spec"]
    return pod


def _container(workload: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = _pod(workload)["containers"]
    (container,) = containers
    return container


def _role(name: str) -> str:
    return segments_role(_container(WORKLOADS[name])["args"])


def container_env(
    container: dict[str, Any], objects: list[dict[str, Any]] = OBJECTS
) -> dict[str, str]:
    """The variables a container gets: envFrom ConfigMaps/Secrets, then its own env."""
    env: dict[str, str] = {}
    configmaps, secrets = _objects("ConfigMap", objects), _objects("Secret", objects)
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(configmaps[source["configMapRef"]["name"]]["data"])
        else:
            env.update(secrets[source["secretRef"]["name"]]["stringData"])
    env.update({item["name"]: item["value"] for item in container.get("env", [])})
    return env


def manifest_problems(objects: list[dict[str, Any]]) -> list[str]:
    """Every SEGMENTS_* variable a container gets is a setting (and they validate together);
    every container runs a real `segments` role."""
    problems = []
    for obj in objects:
        if obj["kind"] in ("Deployment", "Job"):
            name = obj["metadata"]["name"]
            (container,) = obj["spec"]["template"]["spec"]["containers"]
            problems += check_env(container_env(container, objects), f"k8s {name}")
            problems += check_segments_args(container.get("args", []), f"k8s {name}")
    return problems


def test_every_file_is_in_the_kustomization() -> None:
    assert sorted(KUSTOMIZATION["resources"]) == sorted(MANIFESTS)
    (image,) = KUSTOMIZATION["images"]
    for name, workload in WORKLOADS.items():
        assert _container(workload)["image"] == image["name"], name


def test_the_roles_are_deployed() -> None:
    roles = {name: _role(name) for name in WORKLOADS}
    assert roles == {
        "segments-api": "api",
        "segments-consumer": "consume",
        "segments-sweeper": "sweep",
        "segments-topics": "topics",
    }


def test_env_and_args_match_the_code() -> None:
    assert manifest_problems(OBJECTS) == []


def test_the_checker_catches_a_bogus_variable() -> None:
    broken = copy.deepcopy(OBJECTS)
    env_map = next(o for o in broken if o["metadata"]["name"] == "segments-env")
    env_map["data"]["SEGMENTS_REDIS__URI"] = "redis://redis:6379/0"
    consumer = next(o for o in broken if o["metadata"]["name"] == "segments-consumer")
    consumer["spec"]["template"]["spec"]["containers"][0]["args"] = ["consumer"]
    problems = "\n".join(manifest_problems(broken))
    for workload in WORKLOADS:
        assert f"k8s {workload}: SEGMENTS_REDIS__URI is not a setting" in problems
    assert "k8s segments-consumer: segments consumer: " in problems


def _port_number(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container["ports"] if p["name"] == port]
    return int(number)


@pytest.mark.parametrize("name", sorted(DEPLOYMENTS))
def test_probes_hit_real_endpoints(name: str) -> None:
    container = _container(DEPLOYMENTS[name])
    probes = {
        k: container[k]
        for k in ("startupProbe", "livenessProbe", "readinessProbe")
        if k in container
    }
    assert {"livenessProbe", "readinessProbe"} <= set(probes)
    if _role(name) == "api":
        serving_port = api_port(container["args"])
    else:
        serving_port = settings_from_env(container_env(container)).probes.port
    for kind, probe in probes.items():
        get = probe["httpGet"]
        assert _port_number(container, get["port"]) == serving_port, (name, kind)
        if _role(name) == "api":
            assert api_serves(get["path"]), (name, kind, get["path"])
        else:
            assert get["path"] in PROBE_PATHS, (name, kind, get["path"])
    assert probes["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert probes["readinessProbe"]["httpGet"]["path"] == "/readyz"
    scrape = DEPLOYMENTS[name]["spec"]["template"]["metadata"]["annotations"]
    assert int(scrape["prometheus.io/port"]) == serving_port
    path = scrape["prometheus.io/path"]
    assert api_serves(path) if _role(name) == "api" else path in PROBE_PATHS


def test_api_drains_within_the_grace_period() -> None:
    api = DEPLOYMENTS["segments-api"]
    container = _container(api)
    args = container["args"]
    graceful = int(args[args.index("--timeout-graceful-shutdown") + 1])
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
    assert pre_stop + graceful < _pod(api)["terminationGracePeriodSeconds"]


@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_resources_and_security(name: str) -> None:
    pod = _pod(WORKLOADS[name])
    container = _container(WORKLOADS[name])
    for bound in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][bound]), (name, bound)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    # the read-only root leaves /tmp (uvicorn's multiprocess metrics, temp files) to a volume
    assert "/tmp" in {m["mountPath"] for m in container["volumeMounts"]}


def test_pods_run_as_the_images_user() -> None:
    users = [
        i.value for i in parse_dockerfile((ROOT / "Dockerfile").read_text()) if i.keyword == "USER"
    ]
    uid, _, gid = users[-1].partition(":")
    for name, workload in WORKLOADS.items():
        context = _pod(workload)["securityContext"]
        assert (str(context["runAsUser"]), str(context["runAsGroup"])) == (uid, gid), name


def _matches(selector: dict[str, str], workload: dict[str, Any]) -> bool:
    labels = workload["spec"]["template"]["metadata"]["labels"]
    return all(labels.get(k) == v for k, v in selector.items())


def test_service_hpa_and_disruption_budgets_target_the_right_pods() -> None:
    api = DEPLOYMENTS["segments-api"]
    (service,) = _objects("Service").values()
    assert _matches(service["spec"]["selector"], api)
    (port,) = service["spec"]["ports"]
    assert _port_number(_container(api), port["targetPort"]) == api_port(_container(api)["args"])
    (hpa,) = _objects("HorizontalPodAutoscaler").values()
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "segments-api",
    }
    assert hpa["spec"]["minReplicas"] >= 2
    budgets = _objects("PodDisruptionBudget").values()
    for name, deployment in DEPLOYMENTS.items():
        selecting = [
            b for b in budgets if _matches(b["spec"]["selector"]["matchLabels"], deployment)
        ]
        assert len(selecting) == 1, name
        assert _matches(deployment["spec"]["selector"]["matchLabels"], deployment), name


def test_consumers_do_not_outnumber_partitions() -> None:
    args = _container(WORKLOADS["segments-topics"])["args"]
    partitions = int(args[args.index("--partitions") + 1])
    assert DEPLOYMENTS["segments-consumer"]["spec"]["replicas"] <= partitions
    # a surge pod would own no partition and never become ready at replicas == partitions
    assert DEPLOYMENTS["segments-consumer"]["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == 0


def test_rules_config_map_is_mounted_where_the_setting_points_and_valid() -> None:
    rules_map = _objects("ConfigMap")["segments-rules"]
    for name, workload in DEPLOYMENTS.items():
        container = _container(workload)
        rules_file = settings_from_env(container_env(container)).rules_file
        assert rules_file is not None, name
        volumes = {v["name"]: v for v in _pod(workload)["volumes"]}
        mounts = {Path(m["mountPath"]): volumes[m["name"]] for m in container["volumeMounts"]}
        volume = mounts[rules_file.parent]
        assert volume["configMap"]["name"] == "segments-rules", name
        parse_rules(rules_map["data"][rules_file.name])  # raises on invalid rules


def test_api_keys_secret_is_valid_and_a_placeholder() -> None:
    secret = _objects("Secret")["segments-api-keys"]
    raw = secret["stringData"]["SEGMENTS_API__KEYS"]
    keys = ApiSettings(keys=json.loads(raw)).keys
    assert {scope for key in keys for scope in key.scopes} == {"segments:read", "admin"}
    # placeholders: no real key hashes to these
    assert all(set(key.sha256) <= {"0", "1"} for key in keys)
    api_env = container_env(_container(DEPLOYMENTS["segments-api"]))
    assert settings_from_env(api_env).api.keys == keys
    assert not settings_from_env(api_env).api.auth_disabled


def test_settings_reach_their_groups() -> None:
    env = container_env(_container(DEPLOYMENTS["segments-consumer"]))
    settings: Settings = settings_from_env(env)
    assert settings.kafka.bootstrap == env["SEGMENTS_KAFKA_BOOTSTRAP"]
    assert settings.redis.url == env["SEGMENTS_REDIS_URL"]
