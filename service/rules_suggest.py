"""``segments rules suggest``: stream the population shard by shard into a bounded sample and
propose thresholds (:mod:`service.segmentation.suggest`)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from consumers.segmenter import min_day_for
from service.segmentation.profile import MONEY_SCALE
from service.segmentation.rules import Rules
from service.segmentation.suggest import Features, Reservoir, Suggestion, suggest
from service.segmentation.windows import recency_days, utc_day, window_totals
from service.store.keys import SHARDS, Keys
from service.store.packing import decode_customer
from service.store.redis_client import AnyRedis
from service.store.shards import shard_members

READ_CHUNK = 500


async def scan_features(
    redis: AnyRedis, keys: Keys, base: Rules, *, now: datetime, sample: Reservoir
) -> Reservoir:
    """Every customer with a purchase, shard by shard (one shard's ids in memory at a time)."""
    today = utc_day(now)
    min_day = min_day_for(now, base)
    for shard in range(SHARDS):
        ids = await shard_members(redis, keys, shard)
        for i in range(0, len(ids), READ_CHUNK):
            chunk = ids[i : i + READ_CHUNK]
            pipe = redis.pipeline(transaction=False)
            for cid in chunk:
                pipe.hgetall(keys.customer(cid, shard))
            for cid, raw in zip(chunk, await pipe.execute(), strict=True):
                if not raw:
                    continue
                flat = [x for pair in raw.items() for x in pair]
                profile = decode_customer(cid, flat, min_day=min_day).profile
                recency = recency_days(profile, today)
                if recency is None:
                    continue  # never bought: no RFM
                totals = window_totals(profile, base.rfm.window, today)
                sample.add(
                    Features(
                        recency_days=recency,
                        orders=totals.orders,
                        net_spend=Decimal(totals.net_spend) / MONEY_SCALE,
                    )
                )
    return sample


async def suggest_rules(
    redis: AnyRedis,
    keys: Keys,
    base: Rules,
    *,
    now: datetime,
    seed: int,
    sample_size: int,
    k: int,
) -> Suggestion:
    sample = await scan_features(redis, keys, base, now=now, sample=Reservoir(sample_size, seed))
    return suggest(base, sample, seed=seed, k=k)
