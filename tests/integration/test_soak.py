"""A reduced soak (bench/soak.py, `make soak` runs the full 2,000,000 events): events at the
maximum rate through a real ``segments consume`` while a real ``segments api`` serves an
open-loop read load; only intended answers, consumer and API memory flat after warm-up, every
profile exactly the ground truth."""

from __future__ import annotations

import pytest

from bench.soak import Soak, parse
from tests.conftest import REDIS_CLUSTER

pytestmark = [pytest.mark.integration, pytest.mark.slow]


async def test_reduced_soak(kafka_bootstrap: str, redis_url: str, tmp_path: object) -> None:
    args = parse(
        [
            "--events", "150000",
            "--rate", "100",
            "--warmup", "0.5",
            "--max-growth", "64",
            "--timeout-s", "300",
            "--log-dir", str(tmp_path),
            "--bootstrap", kafka_bootstrap,
            "--redis-url", redis_url,
            *(["--redis-cluster"] if REDIS_CLUSTER else []),
        ]
    )  # fmt: skip
    report = await Soak(args).run()
    print(f"\nsoak: {report}")
    assert not report.failures, report
    assert report.statuses == {"200": report.requests}
    assert report.mismatched_profiles == 0 and report.checked_profiles > 7_000
