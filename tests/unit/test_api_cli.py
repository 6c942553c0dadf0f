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
