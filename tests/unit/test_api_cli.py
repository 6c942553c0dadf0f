"""``segments api`` runs the app factory on uvicorn with uvloop, httptools and N workers."""

from __future__ import annotations

from typing import Any

import pytest
import uvicorn

from service import cli


def test_api_command_runs_the_factory(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
    monkeypatch.setattr(uvicorn, "run", lambda *a, **kw: calls.append((a, kw)))
    args = cli.build_parser().parse_args(["api", "--port", "9001", "--workers", "2"])
    assert args.run(args) == 0
    (positional, options) = calls[0]
    assert positional == ("service.api.app:create_app",)
    assert options["factory"] is True
    assert options["workers"] == 2
    assert options["port"] == 9001
    assert options["loop"] == "uvloop"
    assert options["http"] == "httptools"
    assert options["access_log"] is False
    assert options["timeout_graceful_shutdown"] == 20
    assert options["proxy_headers"] is True
    assert options["forwarded_allow_ips"] == "127.0.0.1"


def test_api_command_container_options(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(uvicorn, "run", lambda *a, **kw: calls.append(kw))
    argv = ["api", "--timeout-graceful-shutdown", "5", "--no-proxy-headers"]
    args = cli.build_parser().parse_args([*argv, "--forwarded-allow-ips", "*"])
    assert args.run(args) == 0
    assert calls[0]["timeout_graceful_shutdown"] == 5
    assert calls[0]["proxy_headers"] is False
    assert calls[0]["forwarded_allow_ips"] == "*"
