"""What a rules change would do, before it is made: the sample behind a dry run.

Shared by ``PUT /v1/rules?dry_run=true`` and ``segments rules diff``. The rule-level diff itself
is pure (:mod:`service.segmentation.rules_diff`).
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from datetime import datetime

from consumers.segmenter import min_day_for
from service.segmentation.classifier import classify
from service.segmentation.rules import Rules
from service.store.keys import SHARDS, Keys
from service.store.packing import decode_customer
from service.store.redis_client import AnyRedis
from service.store.shards import shard_members

READ_CHUNK = 500


@dataclass(frozen=True, slots=True)
class SampleMoves:
    customers: int
    moved: int
    moves: list[tuple[str, str, int]]
    """(from segment, to segment, customers), largest first; staying customers left out."""

    def as_json(self) -> dict[str, object]:
        return {
            "customers": self.customers,
            "moved": self.moved,
            "moves": [
                {"from_segment": a, "to_segment": b, "customers": n} for a, b, n in self.moves
            ],
        }


async def sample_moves(
    redis: AnyRedis,
    keys: Keys,
    *,
    current: Rules,
    proposed: Rules,
    now: datetime,
    size: int,
) -> SampleMoves:
    """Classifies up to ``size`` customers with both rule sets at ``now``.

    The sample is whole shards taken in order from a starting shard derived from the proposed
    version: shards are a uniform hash of the customer id, so this is a fair sample, and the
    same proposal on the same data gives the same figures.
    """
    start = random.Random(proposed.version).randrange(SHARDS)  # noqa: S311 - sampling
    ids: list[str] = []
    for i in range(SHARDS):
        if len(ids) >= size:
            break
        ids.extend(await shard_members(redis, keys, (start + i) % SHARDS))
    ids = ids[:size]
    min_day = min(min_day_for(now, current), min_day_for(now, proposed))
    moves: Counter[tuple[str, str]] = Counter()
    customers = 0
    for i in range(0, len(ids), READ_CHUNK):
        chunk = ids[i : i + READ_CHUNK]
        pipe = redis.pipeline(transaction=False)
        for cid in chunk:
            pipe.hgetall(keys.customer(cid))
        for cid, raw in zip(chunk, await pipe.execute(), strict=True):
            if not raw:
                continue
            flat = [x for pair in raw.items() for x in pair]
            profile = decode_customer(cid, flat, min_day=min_day).profile
            if not profile.known:
                continue
            customers += 1
            before = classify(profile, current, now=now).segment
            after = classify(profile, proposed, now=now).segment
            if before != after:
                moves[before, after] += 1
    ordered = sorted(moves.items(), key=lambda item: (-item[1], item[0]))
    return SampleMoves(
        customers=customers,
        moved=sum(moves.values()),
        moves=[(a, b, n) for (a, b), n in ordered],
    )
