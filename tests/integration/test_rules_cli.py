"""``segments rules diff|activate|history|rollback|suggest`` as an operator runs them (a
subprocess per command) against real Redis, on state written through the real consumer path."""

from __future__ import annotations

import random
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from service.rules_store import RulesRegistry
from service.segmentation.rules import load_rules, parse_rules, rules_from_data
from service.store.keys import Keys
from service.store.redis_client import create_redis
from tests.conftest import REDIS_CLUSTER
from tests.support.api import api_settings, load_events
from tests.support.events import purchase

pytestmark = pytest.mark.integration

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
DEFAULT = load_rules(None)


def _run(redis_url: str, prefix: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", "rules", *args],
        env={
            "PATH": "/usr/bin:/bin",
            "SEGMENTS_REDIS__URL": redis_url,
            "SEGMENTS_REDIS__KEY_PREFIX": prefix,
            "SEGMENTS_REDIS__CLUSTER": str(REDIS_CLUSTER).lower(),
            "SEGMENTS_RULES__DRY_RUN_SAMPLE": "1000",
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_diff_activate_history_rollback_suggest(
    redis_url, kafka_bootstrap, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    settings = api_settings(redis_url, kafka_bootstrap)
    prefix = settings.redis.key_prefix
    rng = random.Random(5)
    events = [
        purchase(
            f"c-{rng.randrange(400)}",
            f"e-{i}",
            NOW - timedelta(days=rng.randrange(0, 300), hours=rng.randrange(24)),
            f"{rng.randrange(500, 50000) / 100:.2f}",
        )
        for i in range(2_000)
    ]
    await load_events(settings, events, now=NOW)

    doc = DEFAULT.document()
    doc["lifecycle"]["at_risk_days"] = 30
    new = rules_from_data(doc)
    new_file = tmp_path / "new.yaml"
    new_file.write_text(yaml.safe_dump(doc))

    done = _run(redis_url, prefix, "diff", str(new_file), "--sample")
    assert done.returncode == 0, done.stderr
    assert f"{DEFAULT.version} -> {new.version}: 1 change(s)" in done.stdout
    assert "changed lifecycle.at_risk_days: 60 -> 30" in done.stdout
    assert "sample: " in done.stdout and " -> at_risk: " in done.stdout

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**doc, "segments": []}))
    done = _run(redis_url, prefix, "activate", str(bad))
    assert done.returncode == 1 and "segments: " in done.stderr

    done = _run(redis_url, prefix, "activate", str(new_file), "--by", "ops-bob")
    assert done.returncode == 0, done.stderr
    assert f"activated {new.version} (was {DEFAULT.version}) by ops-bob" in done.stdout

    redis = create_redis(settings.redis)
    try:
        registry = RulesRegistry(redis, Keys(prefix))
        assert await registry.active_version() == new.version
        done = _run(redis_url, prefix, "rollback", DEFAULT.version)
        assert done.returncode == 0 and f"rolled back to {DEFAULT.version}" in done.stdout
        assert await registry.active_version() == DEFAULT.version
        assert [(e.action, e.version) for e in await registry.history()] == [
            ("rollback", DEFAULT.version),
            ("activate", new.version),
        ]
    finally:
        await redis.aclose()
    done = _run(redis_url, prefix, "history")
    assert done.returncode == 0 and f"active: {DEFAULT.version}" in done.stdout

    # suggest: deterministic for a seed, a valid rules file that diff accepts
    outs = []
    for name in ("a.yaml", "b.yaml"):
        out = tmp_path / name
        done = _run(
            redis_url,
            prefix,
            "suggest",
            "--seed",
            "7",
            "--k",
            "4",
            "--sample",
            "300",
            "--as-of",
            NOW.isoformat(),
            "--out",
            str(out),
        )
        assert done.returncode == 0, done.stderr
        outs.append(out.read_text())
    assert outs[0] == outs[1]
    suggested = parse_rules(outs[0])
    customers = len({e["customer_id"] for e in events})
    assert f"{customers} customers scanned, 300 sampled" in outs[0]
    assert outs[0].count("#   - ") == 4  # the clusters, described
    assert suggested.rfm.r_max_recency_days != DEFAULT.rfm.r_max_recency_days
    done = _run(redis_url, prefix, "diff", str(tmp_path / "a.yaml"))
    assert done.returncode == 0 and "changed rfm.r_max_recency_days" in done.stdout
