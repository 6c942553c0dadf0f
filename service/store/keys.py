"""Every Redis key is built here.

A customer belongs to shard ``crc32(customer_id) % SHARDS``. All keys of a customer and of its
shard carry the hash tag ``{sNNNN}``, so one Lua script can touch a customer and its shard's
indexes atomically, also on Redis Cluster (they share a slot).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

SHARDS = 1024
"""Fixed at install: changing it re-homes every key."""


def shard_of(customer_id: str) -> int:
    return zlib.crc32(customer_id.encode()) % SHARDS


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str = ""
    """Namespace of the whole state, e.g. ``replay:`` to rebuild beside the live state."""

    def tag(self, shard: int) -> str:
        return f"{self.prefix}{{s{shard:04d}}}"

    def customer(self, customer_id: str, shard: int | None = None) -> str:
        s = shard_of(customer_id) if shard is None else shard
        return f"{self.tag(s)}:c:{customer_id}"

    def segment_members(self, shard: int, segment: str) -> str:
        return f"{self.tag(shard)}:seg:{segment}"

    def counts(self, shard: int) -> str:
        return f"{self.tag(shard)}:counts"

    def due(self, shard: int) -> str:
        return f"{self.tag(shard)}:due"
