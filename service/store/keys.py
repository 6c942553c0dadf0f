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

    def lease(self, shard: int, job: str) -> str:
        """Who holds ``shard`` for ``job`` (``"<token> <owner>"``, expiring)."""
        return f"{self.tag(shard)}:lease:{job}"

    def lease_fence(self, shard: int, job: str) -> str:
        """Counter of every lease ever granted on ``shard`` for ``job``: the fencing tokens."""
        return f"{self.tag(shard)}:fence:{job}"

    def lease_members(self, job: str) -> str:
        """Live workers of ``job`` (sorted set, owner → expiry ms), to share shards fairly."""
        return f"{self.prefix}lease-members:{job}"

    # Global rules state. One hash tag for all of it, so an activation (version, active
    # pointer, history, re-classification job) is one atomic transaction on Redis Cluster too.

    def rules_tag(self) -> str:
        return f"{self.prefix}{{rules}}"

    def rules_version(self, version: str) -> str:
        """String: the canonical JSON of one stored rules version."""
        return f"{self.rules_tag()}:v:{version}"

    def rules_active(self) -> str:
        """Hash: ``version``, ``by``, ``at`` of the active rules."""
        return f"{self.rules_tag()}:active"

    def rules_history(self) -> str:
        """List, newest first: one JSON entry per activation."""
        return f"{self.rules_tag()}:history"

    def rules_channel(self) -> str:
        """Pub/sub channel announcing a new active version."""
        return f"{self.rules_tag()}:changed"

    def reclassification(self) -> str:
        """Hash: the re-classification job of the latest activation and its totals."""
        return f"{self.rules_tag()}:reclass"

    def reclassification_done(self) -> str:
        """Set: shards re-classified for the job's version."""
        return f"{self.rules_tag()}:reclass:done"

    # Operator figures (dashboard): per-minute and per-hour counters under one hash tag, so a
    # batch's counters are one atomic script on Redis Cluster too.

    def stats_tag(self) -> str:
        return f"{self.prefix}{{stats}}"

    def changes_watermark(self, topic: str) -> str:
        """Hash: partition → last counted offset of the changes topic (counted once, whichever
        API worker reads the record first)."""
        return f"{self.stats_tag()}:chg:wm:{topic}"

    def changes_minute(self, epoch_minute: int) -> str:
        """Hash of one minute's segment changes: ``n`` and ``c:<cause>``."""
        return f"{self.stats_tag()}:chg:m:{epoch_minute}"

    def changes_hour(self, epoch_hour: int) -> str:
        """Hash of one hour's segment changes: ``n``, ``m:<from>><to>`` (the migration
        matrix), ``lost:<segment>`` (to churned), ``won:<segment>`` (reactivated)."""
        return f"{self.stats_tag()}:chg:h:{epoch_hour}"

    def pipeline_minute(self, epoch_minute: int) -> str:
        """Hash of one minute of consumer batches: records, applied, duplicates,
        dead_lettered, changes, ``dl:<reason>``."""
        return f"{self.stats_tag()}:pipe:m:{epoch_minute}"
