"""The command line fails fast and clearly on bad configuration."""

from __future__ import annotations

import subprocess
import sys


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_invalid_setting_names_the_variable() -> None:
    done = _run({"SEGMENTS_KAFKA__MAX_BATCH": "-1"}, "topics")
    assert done.returncode == 2
    assert "SEGMENTS_KAFKA__MAX_BATCH" in done.stderr
    assert "Traceback" not in done.stderr


def test_unparseable_json_setting_is_a_clear_error() -> None:
    done = _run({"SEGMENTS_API__KEYS": '[{"x"'}, "topics")
    assert done.returncode == 2
    assert "invalid configuration" in done.stderr
    assert "Traceback" not in done.stderr


def test_rules_validate_reports_the_version(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from service.segmentation.rules import load_rules

    path = tmp_path / "rules.json"
    path.write_text(load_rules(None).canonical_json())
    done = _run({}, "rules", "validate", str(path))
    assert done.returncode == 0, done.stderr
    assert load_rules(None).version in done.stdout


def test_rules_validate_points_at_the_bad_path(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "rules.yaml"
    path.write_text("windows: [30, -5]\n")
    done = _run({}, "rules", "validate", str(path))
    assert done.returncode == 1
    assert "windows" in done.stderr
