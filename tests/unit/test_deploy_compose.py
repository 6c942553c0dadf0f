"""deploy/compose.yml, Prometheus and Grafana provisioning against the code: real settings,
real roles, addresses that name the services, scrape targets on the ports the roles serve."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from service.settings import Settings
from tests.support.deploy import (
    DEPLOY,
    PROBE_PATHS,
    api_port,
    api_serves,
    check_env,
    check_segments_args,
    load_yaml,
    segments_role,
    settings_from_env,
)

COMPOSE = load_yaml(DEPLOY / "compose.yml")
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
PROMETHEUS = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
# Services that run our image, i.e. `segments <command>`.
OURS = {name: svc for name, svc in SERVICES.items() if "build" in svc}


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # ["KEY=value", ...]
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def compose_problems(compose: dict[str, Any]) -> list[str]:
    """Every SEGMENTS_* variable is a setting and every command a real `segments` role."""
    problems = []
    for name, service in compose["services"].items():
        problems += check_env(_env(service), f"compose {name}")
        if "build" in service:
            problems += check_segments_args(service.get("command", []), f"compose {name}")
    return problems


def _settings(service: str) -> Settings:
    return settings_from_env(_env(SERVICES[service]))


def _replicas(service: str) -> int:
    replicas: int = SERVICES[service].get("deploy", {}).get("replicas", 1)
    return replicas


def test_the_whole_system_is_there() -> None:
    expected = {"kafka", "redis", "topics", "api", "consumer", "sweeper", "demo"}
    assert expected | {"prometheus", "grafana"} <= set(SERVICES)
    roles = {name: segments_role(svc["command"]) for name, svc in OURS.items()}
    assert roles == {
        "topics": "topics",
        "api": "api",
        "consumer": "consume",
        "sweeper": "sweep",
        "demo": "demo",
    }
    assert _replicas("api") == 2
    assert _replicas("consumer") == 2


def test_env_and_commands_match_the_code() -> None:
    assert compose_problems(COMPOSE) == []


def test_the_checker_catches_a_bogus_variable_and_role() -> None:
    broken = copy.deepcopy(COMPOSE)
    broken["services"]["consumer"]["environment"]["SEGMENTS_KAFKA__BOOTSTRAPS"] = "kafka:9092"
    broken["services"]["sweeper"]["command"] = ["swep"]
    broken["services"]["api"]["command"] = ["api", "--wrokers", "2"]
    broken["services"]["demo"]["environment"] = {"SEGMENTS_LOG_LEVEL": "LOUD"}
    problems = "\n".join(compose_problems(broken))
    assert "compose consumer: SEGMENTS_KAFKA__BOOTSTRAPS is not a setting" in problems
    assert "compose sweeper: segments swep: " in problems
    assert "compose api: segments api --wrokers 2: " in problems
    assert "compose demo: invalid settings" in problems


def test_the_official_kafka_image_in_kraft_mode() -> None:
    kafka = SERVICES["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    assert "controller" in kafka["environment"]["KAFKA_PROCESS_ROLES"]
    assert "KAFKA_ZOOKEEPER_CONNECT" not in kafka["environment"]


@pytest.mark.parametrize("service", sorted(OURS))
def test_addresses_name_the_compose_services(service: str) -> None:
    settings = _settings(service)
    for address in settings.kafka.bootstrap.split(","):
        host, port = address.rsplit(":", 1)
        assert host in SERVICES, f"{service}: kafka address {address} is no compose service"
        advertised = SERVICES[host]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
        assert f"//{host}:{port}" in advertised, (address, advertised)
    redis = urlsplit(settings.redis.url)
    assert redis.hostname in SERVICES, f"{service}: redis host {redis.hostname}"
    redis_command = SERVICES[redis.hostname]["command"]
    served_port = (
        int(redis_command[redis_command.index("--port") + 1]) if "--port" in redis_command else 6379
    )
    assert redis.port == served_port


def test_redis_never_evicts_state() -> None:
    command = SERVICES["redis"]["command"]
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"


def test_consumers_do_not_outnumber_partitions() -> None:
    topics = OURS["topics"]["command"]
    partitions = int(topics[topics.index("--partitions") + 1])
    assert _replicas("consumer") <= partitions


def test_roles_start_after_their_dependencies() -> None:
    for name in ("api", "consumer", "sweeper", "demo"):
        depends = OURS[name]["depends_on"]
        assert depends["topics"]["condition"] == "service_completed_successfully", name


def _scrape_targets() -> dict[str, tuple[str, int, str]]:
    """Prometheus job → (compose service, port, metrics path)."""
    targets = {}
    for job in PROMETHEUS["scrape_configs"]:
        for sd in job.get("dns_sd_configs", []):
            for name in sd["names"]:
                targets[job["job_name"]] = (name, sd["port"], job.get("metrics_path", "/metrics"))
    return targets


def test_prometheus_scrapes_every_role_on_its_port() -> None:
    targets = _scrape_targets()
    assert {service for service, _, _ in targets.values()} == {"api", "consumer", "sweeper"}
    for job, (service, port, path) in targets.items():
        assert service in SERVICES, job
        if segments_role(SERVICES[service]["command"]) == "api":
            assert port == api_port(SERVICES[service]["command"]), job
            assert api_serves(path), (job, path)
        else:
            assert port == _settings(service).probes.port, job
            assert path in PROBE_PATHS, (job, path)


def _mounts(service: str) -> dict[str, Path]:
    """Container path → host path (resolved) of a service's bind mounts."""
    mounts: dict[str, Path] = {}
    for volume in SERVICES[service]["volumes"]:
        source, target = volume.split(":")[:2]
        mounts[target] = (DEPLOY / source).resolve()
    return mounts


def test_prometheus_config_and_alerts_are_mounted() -> None:
    mounts = _mounts("prometheus")
    command = SERVICES["prometheus"]["command"]
    config = next(c.split("=", 1)[1] for c in command if c.startswith("--config.file="))
    directory, _, name = config.rpartition("/")
    assert mounts[directory] / name == DEPLOY / "prometheus" / "prometheus.yml"
    for rules in PROMETHEUS["rule_files"]:  # relative to the config file
        alerts = load_yaml(mounts[directory] / rules)
        assert alerts["groups"], rules


def test_grafana_provisioning_points_at_prometheus_and_the_dashboards() -> None:
    provisioning = DEPLOY / "grafana" / "provisioning"
    datasources = load_yaml(provisioning / "datasources" / "prometheus.yml")["datasources"]
    (prometheus,) = datasources
    url = urlsplit(prometheus["url"])
    assert url.hostname == "prometheus" and url.hostname in SERVICES
    assert f"{url.port}:{url.port}" in SERVICES["prometheus"]["ports"]
    assert prometheus["uid"] == "prometheus"  # the dashboards refer to it by this uid
    (provider,) = load_yaml(provisioning / "dashboards" / "segments.yml")["providers"]
    mounts = _mounts("grafana")
    assert mounts["/etc/grafana/provisioning"] == provisioning
    dashboards = mounts[provider["options"]["path"]]
    assert dashboards == DEPLOY / "grafana" / "dashboards"
    assert list(dashboards.glob("*.json")), "no dashboard to provision"
    home = SERVICES["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    directory, _, name = home.rpartition("/")
    assert (mounts[directory] / name).is_file(), home
