"""The sweeper's pure parts: the fenced write script, the lag summary, the CLI entry."""

from __future__ import annotations

from consumers.sweeper import SweepStats, _fenced_write_source
from service.cli import build_parser


def test_fenced_write_checks_the_lease_first_and_moves_the_revision_on() -> None:
    source = _fenced_write_source()
    lines = [line for line in source.splitlines() if not line.startswith("--")]
    assert lines[0] == "if redis.call('GET', KEYS[6]) ~= ARGV[8] then return -1 end"
    assert lines[-1] == "return 1"
    assert source.count("return 1") == 1
    # the segment write itself moves the revision on (a consumer's cache relies on it)
    assert "'v', tostring((tonumber(ARGV[1]) or 0) + 1)" in source


def test_lag_summary() -> None:
    stats = SweepStats()
    assert stats.lag_summary() == {}
    stats.lag_s.extend(i / 10 for i in range(1, 101))
    summary = stats.lag_summary()
    assert summary["lag_samples"] == 100
    assert summary["lag_p50_s"] == 5.1
    assert summary["lag_p99_s"] == 10.0
    assert summary["lag_max_s"] == 10.0


def test_segments_sweep_is_a_command() -> None:
    args = build_parser().parse_args(["sweep"])
    assert args.command == "sweep"
    assert args.run.__name__ == "_sweep"
