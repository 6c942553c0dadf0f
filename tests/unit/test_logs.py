"""Structured logs: one JSON object per line, extras as fields, the level from the settings."""

from __future__ import annotations

import io
import logging
import logging.config
from collections.abc import Iterator

import orjson
import pytest

from service.logs import JsonFormatter, configure_logging, logging_config, position
from service.settings import Settings


@pytest.fixture
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    kafka_level = logging.getLogger("aiokafka").level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        logging.getLogger("aiokafka").setLevel(kafka_level)


def _capture(level: str) -> io.StringIO:
    """``configure_logging(level)``, its handler writing to a buffer instead of stderr."""
    configure_logging(level)
    out = io.StringIO()
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(out)
    return out


def test_one_json_object_per_line_with_extras(restore_root: None) -> None:
    out = _capture("INFO")
    log = logging.getLogger("consumers.handler")
    log.warning("dead letter", extra={"at": position("events", 3, 1234), "reason": "invalid_json"})
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        log.exception("batch failed")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2  # a multi-line traceback stays inside one line
    first, second = (orjson.loads(line) for line in lines)
    assert first["msg"] == "dead letter"
    assert first["level"] == "warning"
    assert first["logger"] == "consumers.handler"
    assert first["at"] == "events[3]@1234"
    assert first["reason"] == "invalid_json"
    assert first["ts"].endswith("+00:00")
    assert set(first) == {"ts", "level", "logger", "msg", "at", "reason"}  # no LogRecord noise
    assert second["level"] == "error"
    assert "ValueError: boom" in second["exc"]


def test_level_comes_from_the_settings(restore_root: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEGMENTS_LOG_LEVEL", "warning")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.log_level == "WARNING"
    out = _capture(settings.log_level)
    log = logging.getLogger("service.test")
    log.info("not shown")
    log.warning("shown")
    assert [orjson.loads(line)["msg"] for line in out.getvalue().splitlines()] == ["shown"]
    # aiokafka's chatter stays at WARNING and above even at DEBUG
    configure_logging("DEBUG")
    assert logging.getLogger("aiokafka").level == logging.WARNING


def test_the_worker_config_formats_alike() -> None:
    """The dictConfig given to uvicorn's workers uses the same formatter at the same level."""
    config = logging_config("ERROR")
    assert config["formatters"]["json"]["()"] is JsonFormatter
    assert config["root"]["level"] == "ERROR"
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        assert config["loggers"][name]["propagate"] is True
        assert config["loggers"][name]["handlers"] == []
    record = logging.LogRecord("uvicorn.error", logging.INFO, "", 0, "Started %s", ("x",), None)
    record.color_message = "\x1b[1mStarted\x1b[0m"
    assert orjson.loads(JsonFormatter().format(record))["msg"] == "Started x"
    assert "color_message" not in orjson.loads(JsonFormatter().format(record))
