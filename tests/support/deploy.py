"""Checks of the deployment files (Dockerfile, compose, k8s) against the code.

Pure: files are parsed, the app's route table and the CLI's parser are built, nothing runs.
Every ``check_*`` function returns a list of problems (empty when all is well), so a test can
show that a checker catches a bogus file as well as pass the real one.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.routing import Match

from service.api.app import create_app
from service.cli import build_parser
from service.settings import ApiSettings, Settings

ROOT = Path(__file__).resolve().parent.parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
PREFIX = "SEGMENTS_"
PROBE_PATHS = ("/healthz", "/readyz", "/metrics")
"""What the probes server of ``consume``/``sweep`` serves (``service.probes``)."""


# --- settings -------------------------------------------------------------------------------


@dataclass(frozen=True)
class EnvNames:
    """Every environment variable :class:`Settings` reads, upper case."""

    exact: frozenset[str]
    """Leaf settings, e.g. ``SEGMENTS_KAFKA__BOOTSTRAP`` and ``SEGMENTS_KAFKA_BOOTSTRAP``."""
    groups: frozenset[str]
    """Nested groups settable as JSON in one variable, e.g. ``SEGMENTS_KAFKA``."""
    open_prefixes: frozenset[str]
    """Mapping-valued settings whose keys are free, e.g.
    ``SEGMENTS_VALIDATION__CURRENCY_RATES__``."""

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        upper = name.upper()
        return (
            upper in self.exact
            or upper in self.groups
            or any(upper.startswith(p) for p in self.open_prefixes)
        )


def _env_names_of(model: type[BaseModel], prefix: str, into: dict[str, set[str]]) -> None:
    for name, field in model.model_fields.items():
        aliases = {name}
        for alias in (field.alias, field.validation_alias):
            if isinstance(alias, str):
                aliases.add(alias)
        for alias in aliases:
            env = f"{prefix}{alias.upper()}"
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                into["groups"].add(env)
                _env_names_of(annotation, f"{env}__", into)
            else:
                into["exact"].add(env)
                if getattr(annotation, "__origin__", None) is dict:
                    into["open"].add(f"{env}__")


@cache
def setting_env_names() -> EnvNames:
    """Walks :class:`Settings` (nested groups with ``__``, flat aliases) for its variables."""
    into: dict[str, set[str]] = {"exact": set(), "groups": set(), "open": set()}
    _env_names_of(Settings, PREFIX, into)
    return EnvNames(frozenset(into["exact"]), frozenset(into["groups"]), frozenset(into["open"]))


def check_env(env: Mapping[str, object], where: str) -> list[str]:
    """Every ``SEGMENTS_*`` variable of ``env`` is a setting, and together they validate."""
    known = setting_env_names()
    ours = {k: v for k, v in env.items() if k.upper().startswith(PREFIX)}
    problems = [f"{where}: {k} is not a setting" for k in sorted(ours) if k not in known]
    if not problems and ours:
        try:
            settings_from_env(ours)
        except ValueError as invalid:  # pydantic's ValidationError is a ValueError
            problems.append(f"{where}: invalid settings: {invalid}")
    return problems


def settings_from_env(env: Mapping[str, object]) -> Settings:
    """The :class:`Settings` a process with exactly these ``SEGMENTS_*`` variables builds."""
    saved = {k: v for k, v in os.environ.items() if k.upper().startswith(PREFIX)}
    try:
        for key in saved:
            del os.environ[key]
        os.environ.update({k: str(v) for k, v in env.items()})
        return Settings(_env_file=None)  # type: ignore[call-arg]
    finally:
        for key in env:
            os.environ.pop(key, None)
        os.environ.update(saved)


# --- the command line and the app -----------------------------------------------------------


def check_segments_args(args: Iterable[object], where: str) -> list[str]:
    """``segments ARGS`` is accepted by the real CLI parser (role and options)."""
    argv = [str(a) for a in args]
    if not argv:
        return [f"{where}: no segments command (the image's default would run)"]
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            build_parser().parse_args(argv)
    except SystemExit:
        message = stderr.getvalue().strip().splitlines()[-1:] or ["refused"]
        return [f"{where}: segments {' '.join(argv)}: {message[0]}"]
    return []


def segments_role(args: Iterable[object]) -> str:
    return str(next(iter(args)))


def api_port(args: Iterable[object]) -> int:
    """The port ``segments api ARGS`` listens on."""
    parsed = build_parser().parse_args([str(a) for a in args])
    assert parsed.command == "api", parsed.command
    port: int = parsed.port
    return port


@cache
def _api_app() -> Starlette:
    return create_app(Settings(_env_file=None, api=ApiSettings()))  # type: ignore[call-arg]


def api_serves(path: str, method: str = "GET") -> bool:
    """Whether the API's route table (``create_app``, default settings) answers ``method path``
    (asked through the router's own matching, so included routers count)."""
    scope = {"type": "http", "path": path, "method": method, "root_path": "", "headers": []}
    return any(route.matches(scope)[0] == Match.FULL for route in _api_app().router.routes)


# --- YAML and Dockerfile --------------------------------------------------------------------


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def load_yaml_documents(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


@dataclass(frozen=True)
class Instruction:
    keyword: str
    """Upper case: ``FROM``, ``RUN``, ``HEALTHCHECK``, …"""
    value: str
    """Everything after the keyword, continuation lines joined."""
    stage: int
    """Index of the build stage (``FROM``) the instruction belongs to."""

    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form ``CMD``/``ENTRYPOINT`` (or ``HEALTHCHECK ... CMD``)."""
        text = self.value.split(" CMD ", 1)[1] if self.keyword == "HEALTHCHECK" else self.value
        try:
            parsed = json.loads(text.strip())
        except json.JSONDecodeError:
            return None
        return [str(p) for p in parsed] if isinstance(parsed, list) else None


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions of a Dockerfile: comments dropped, ``\\`` continuations joined."""
    instructions: list[Instruction] = []
    stage = -1
    for logical in _logical_lines(text):
        keyword, _, value = logical.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        instructions.append(Instruction(keyword, value.strip(), stage))
    return instructions


def _logical_lines(text: str) -> Iterator[str]:
    pending: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending.append(line[:-1].strip())
            continue
        pending.append(line)
        yield " ".join(part for part in pending if part)
        pending = []
    if pending:
        yield " ".join(pending)


def dockerfile_args(instructions: list[Instruction]) -> dict[str, str]:
    """Defaults of the ``ARG``s declared before the first ``FROM``."""
    defaults = {}
    for ins in instructions:
        if ins.keyword == "FROM":
            break
        if ins.keyword == "ARG" and "=" in ins.value:
            name, _, default = ins.value.partition("=")
            defaults[name.strip()] = default.strip().strip('"')
    return defaults


def env_of_instructions(instructions: Iterable[Instruction]) -> dict[str, str]:
    """``ENV`` assignments (``KEY=value`` form, several per instruction)."""
    env: dict[str, str] = {}
    for ins in instructions:
        if ins.keyword == "ENV":
            for assignment in ins.value.split():
                name, _, value = assignment.partition("=")
                env[name] = value.strip('"')
    return env


def labels_of_instructions(instructions: Iterable[Instruction]) -> dict[str, str]:
    """``LABEL key="value" …`` pairs (values double-quoted)."""
    labels: dict[str, str] = {}
    for ins in instructions:
        if ins.keyword == "LABEL":
            rest = ins.value
            while rest:
                key, _, rest = rest.partition("=")
                if not rest.startswith('"'):
                    raise ValueError(f"unquoted LABEL value for {key}")
                end = rest.index('"', 1)
                labels[key.strip()] = rest[1:end]
                rest = rest[end + 1 :].strip()
    return labels
