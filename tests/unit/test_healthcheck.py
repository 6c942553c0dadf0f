"""The image's HEALTHCHECK (``python -m service.healthcheck``) finds the role and probes it."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from prometheus_client import CollectorRegistry

from service.healthcheck import _proc_cmdlines, check, health_url, segments_argv
from service.probes import ProbesServer
from service.settings import ProbesSettings, Settings


def _settings(probes_port: int = 9400) -> Settings:
    return Settings(_env_file=None, probes=ProbesSettings(port=probes_port))  # type: ignore[call-arg]


def test_finds_the_segments_arguments_as_entrypoint_or_under_an_init() -> None:
    entrypoint = ["/opt/venv/bin/python", "/opt/venv/bin/segments", "api", "--port", "8001"]
    under_init = ["/sbin/docker-init", "--", "segments", "consume"]
    assert segments_argv(iter([entrypoint])) == ["api", "--port", "8001"]
    assert segments_argv(iter([["sleep", "5"], under_init])) == ["consume"]
    assert segments_argv(iter([["/bin/sh"], ["python", "-m", "service.healthcheck"]])) is None


def test_reads_command_lines_from_proc_pid_1_first(tmp_path: Path) -> None:
    for pid, cmdline in ((12, b"sleep\x005\x00"), (1, b"segments\x00sweep\x00"), (3, b"")):
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "cmdline").write_bytes(cmdline)
    (tmp_path / "self").mkdir()
    assert list(_proc_cmdlines(tmp_path)) == [["segments", "sweep"], ["sleep", "5"]]


def test_url_per_role() -> None:
    settings = _settings(9401)
    assert health_url(["api"], settings) == "http://127.0.0.1:8000/healthz"
    assert health_url(["api", "--port", "8080"], settings) == "http://127.0.0.1:8080/healthz"
    assert health_url(["consume"], settings) == "http://127.0.0.1:9401/healthz"
    assert health_url(["sweep"], settings) == "http://127.0.0.1:9401/healthz"
    assert health_url(["consume"], _settings(0)) is None  # probes turned off
    assert health_url(["demo", "--rate", "5"], settings) is None
    assert health_url(["topics", "--partitions", "8"], settings) is None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def test_healthy_while_the_probes_server_answers() -> None:
    server = ProbesServer(checks={}, registry=CollectorRegistry())
    await server.start("127.0.0.1", 0)
    try:
        settings = _settings(server.port)
        # urllib blocks: run it beside the event loop that serves the probes
        assert await asyncio.to_thread(check, ["consume"], settings) == 0
    finally:
        await server.close()
    assert await asyncio.to_thread(check, ["consume"], settings) == 1  # nothing listens now
    assert await asyncio.to_thread(check, ["api", "--port", str(_free_port())], settings) == 1
    assert check(["demo"], settings) == 0
