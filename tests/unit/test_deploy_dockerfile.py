"""The Dockerfile and .dockerignore against the code: one image for every role, non-root,
locked dependencies, a HEALTHCHECK on a path the roles serve, OCI labels."""

from __future__ import annotations

import fnmatch
import tomllib

import pytest

from service import healthcheck
from service.settings import Settings
from tests.support.deploy import (
    PROBE_PATHS,
    ROOT,
    Instruction,
    api_port,
    api_serves,
    check_env,
    check_segments_args,
    dockerfile_args,
    env_of_instructions,
    labels_of_instructions,
    parse_dockerfile,
)

INSTRUCTIONS = parse_dockerfile((ROOT / "Dockerfile").read_text())
FINAL_STAGE = max(ins.stage for ins in INSTRUCTIONS)
FINAL = [ins for ins in INSTRUCTIONS if ins.stage == FINAL_STAGE]


def _one(keyword: str, instructions: list[Instruction] = FINAL) -> Instruction:
    found = [ins for ins in instructions if ins.keyword == keyword]
    assert found, f"the final stage has no {keyword}"
    return found[-1]  # the last one wins, as in docker


def test_multi_stage_on_slim_python_3_11() -> None:
    stages = [ins for ins in INSTRUCTIONS if ins.keyword == "FROM"]
    assert len(stages) >= 2, "build dependencies must stay out of the runtime stage"
    defaults = dockerfile_args(INSTRUCTIONS)
    for stage in stages:
        image = stage.value.split()[0]
        for name, value in defaults.items():
            image = image.replace(f"${{{name}}}", value)
        assert image.startswith("python:3.11-slim"), image


def test_runs_as_a_non_root_user() -> None:
    user = _one("USER").value.split(":")[0]
    assert user not in ("root", "0"), user
    assert user.isdigit() and int(user) >= 1000, "numeric uid, so runAsNonRoot can verify it"


def test_one_entrypoint_for_every_role() -> None:
    assert _one("ENTRYPOINT").exec_form() == ["segments"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["segments"] == "service.cli:main"
    default = _one("CMD").exec_form()
    assert default is not None, "CMD in exec form"
    assert check_segments_args(default, "Dockerfile CMD") == []
    assert default[0] == "api"


def test_default_command_drains_on_stop() -> None:
    assert _one("STOPSIGNAL").value == "SIGTERM"
    default = _one("CMD").exec_form()
    assert default is not None
    assert "--timeout-graceful-shutdown" in default


def test_dependencies_installed_from_the_lock_with_hashes() -> None:
    runs = [ins.value for ins in INSTRUCTIONS if ins.keyword == "RUN"]
    locked = [run for run in runs if "-r requirements.lock" in run]
    assert locked, "no RUN installs requirements.lock"
    assert all("--require-hashes" in run for run in locked)
    copies = [ins.value for ins in INSTRUCTIONS if ins.keyword == "COPY"]
    assert any(c.split()[0] == "requirements.lock" for c in copies)
    # our own package is added without resolving anything outside the lock
    own = [run for run in runs if "pip install" in run and " ." in run]
    assert own and all("--no-deps" in run for run in own)


def test_python_environment_for_containers() -> None:
    env = env_of_instructions(FINAL)
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1"  # read-only root file system
    assert env.get("PYTHONUNBUFFERED") == "1"
    assert env["PATH"].startswith("/opt/venv/bin")
    assert check_env(env, "Dockerfile ENV") == []


def test_oci_labels() -> None:
    labels = labels_of_instructions(FINAL)
    for key in ("title", "description", "version", "revision", "created", "source", "licenses"):
        assert labels.get(f"org.opencontainers.image.{key}"), f"label {key} missing"


def test_exposed_ports_are_the_roles_ports() -> None:
    exposed = {
        int(p.split("/")[0]) for ins in FINAL if ins.keyword == "EXPOSE" for p in ins.value.split()
    }
    default = _one("CMD").exec_form()
    assert default is not None
    assert api_port(default) in exposed
    assert Settings(_env_file=None).probes.port in exposed  # type: ignore[call-arg]


def test_healthcheck_probes_paths_the_roles_serve() -> None:
    check = _one("HEALTHCHECK")
    assert check.exec_form() == ["python", "-m", "service.healthcheck"]
    assert api_serves(healthcheck.HEALTH_PATH)
    assert healthcheck.HEALTH_PATH in PROBE_PATHS
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    default = _one("CMD").exec_form()
    assert default is not None
    assert healthcheck.health_url(default, settings) == (
        f"http://127.0.0.1:{api_port(default)}{healthcheck.HEALTH_PATH}"
    )


@pytest.mark.parametrize(
    "copied",
    ["requirements.lock", "pyproject.toml", "README.md", "service", "consumers", "schemas"],
)
def test_dockerignore_keeps_what_the_build_copies(copied: str) -> None:
    assert (ROOT / copied).exists(), copied
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert not any(fnmatch.fnmatch(copied, p) for p in patterns), copied


def test_dockerignore_leaves_out_local_state() -> None:
    patterns = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", ".services", "**/__pycache__", ".env"} <= patterns
