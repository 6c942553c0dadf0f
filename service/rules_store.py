"""The rules registry in Redis: stored versions, the active one, history, the re-classification job.

Every key shares the hash tag ``{rules}`` (:meth:`service.store.keys.Keys.rules_tag`), so the
activation script touches them atomically, on a single Redis and on Redis Cluster alike:

- ``{rules}:v:<version>`` — the canonical JSON of each version ever stored (content hash, so
  storing a version twice is a no-op; kept forever, they are small and rollback needs them);
- ``{rules}:active`` — hash ``version``, ``by`` (API key name or CLI user), ``at``, ``action``
  (``activate`` | ``rollback``), ``previous``;
- ``{rules}:history`` — list of activations, newest first, trimmed to ``rules.history_limit``;
- ``{rules}:reclass`` and ``{rules}:reclass:done`` — the background re-classification of the
  latest activation (version, totals) and the shards already done for it.

An activation also publishes the version on ``{rules}:changed``; :mod:`service.rules_runtime`
watchers pick it up at once (and poll in case a message is missed).

When nothing was ever activated, the rules file of the settings (or the packaged default) is in
effect; the first activation stores that version too and names it as ``previous``, so it can be
rolled back to.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from typing import Any, Literal

import orjson

from service.segmentation.rules import Rules, parse_rules
from service.store.keys import SHARDS, Keys
from service.store.redis_client import AnyRedis

Action = Literal["activate", "rollback"]
ReclassState = Literal["none", "pending", "running", "done"]


@dataclass(frozen=True, slots=True)
class Activation:
    """One entry of the rules history (and the active pointer)."""

    version: str
    by: str
    """Who activated it: the API key's name, or ``cli:<user>``."""
    at: str
    """When, RFC 3339 UTC."""
    action: Action
    previous_version: str | None

    def as_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "by": self.by,
            "at": self.at,
            "action": self.action,
            "previous_version": self.previous_version,
        }


@dataclass(frozen=True, slots=True)
class ActivationResult:
    changed: bool
    """False when the version was active already (nothing was written)."""
    activation: Activation | None
    """The new history entry; None when nothing changed."""


@dataclass(frozen=True, slots=True)
class ReclassProgress:
    """Background re-classification after the latest activation."""

    version: str | None
    state: ReclassState
    shards_total: int
    shards_done: int
    customers: int
    """Customers re-classified so far (shards done)."""
    changes: int
    """Change events (``cause: rules``) produced so far."""
    activated_at: str | None
    started_at: str | None
    finished_at: str | None
    not_before_ms: int

    def as_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "state": self.state,
            "shards_total": self.shards_total,
            "shards_done": self.shards_done,
            "customers": self.customers,
            "changes": self.changes,
            "activated_at": self.activated_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
        }


class UnknownVersion(LookupError):
    """A rules version that was never stored."""


def _script_source(name: str) -> str:
    return resources.files("service.store").joinpath(f"lua/{name}.lua").read_text()


def iso(instant: datetime) -> str:
    return instant.isoformat().replace("+00:00", "Z")


def _text(value: bytes | str | None) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else value


class RulesRegistry:
    """Versions, active pointer, history and re-classification job of the rules, in Redis."""

    def __init__(self, redis: AnyRedis, keys: Keys, *, history_limit: int = 100) -> None:
        self._redis = redis
        self._keys = keys
        self._history_limit = history_limit
        self._activate = redis.register_script(_script_source("activate_rules"))
        self._shard_done = redis.register_script(_script_source("reclass_shard_done"))
        self._parsed: dict[str, Rules] = {}

    @property
    def keys(self) -> Keys:
        return self._keys

    # --- versions ------------------------------------------------------------------------------

    async def store(self, rules: Rules) -> None:
        """Keeps a version's document (idempotent: the key is its content hash)."""
        await self._redis.set(
            self._keys.rules_version(rules.version), rules.canonical_json(), nx=True
        )
        self._parsed.setdefault(rules.version, rules)

    async def load(self, version: str) -> Rules:
        """A stored version, validated again (and cached: versions never change)."""
        cached = self._parsed.get(version)
        if cached is not None:
            return cached
        text = _text(await self._redis.get(self._keys.rules_version(version)))
        if text is None:
            raise UnknownVersion(version)
        rules = parse_rules(text)
        if rules.version != version:  # a document written by hand, or a changed canonical form
            raise UnknownVersion(f"{version} (stored document hashes to {rules.version})")
        if len(self._parsed) > 64:
            self._parsed.clear()
        self._parsed[version] = rules
        return rules

    # --- the active version ---------------------------------------------------------------------

    async def active_version(self) -> str | None:
        return _text(await self._redis.hget(self._keys.rules_active(), "version"))

    async def active(self) -> Activation | None:
        raw = await self._redis.hgetall(self._keys.rules_active())
        if not raw:
            return None
        fields = {_text(k): _text(v) for k, v in raw.items()}
        return Activation(
            version=fields["version"] or "",
            by=fields.get("by") or "",
            at=fields.get("at") or "",
            action="rollback" if fields.get("action") == "rollback" else "activate",
            previous_version=fields.get("previous") or None,
        )

    async def activate(
        self,
        rules: Rules,
        *,
        by: str,
        at: datetime,
        fallback: Rules,
        action: Action = "activate",
        grace_s: float = 0.0,
    ) -> ActivationResult:
        """Stores ``rules`` and makes it active, with its history entry and a new
        re-classification job (which starts ``grace_s`` from now), then announces it.

        ``fallback`` is the version in effect when nothing was ever activated (the rules file);
        it is stored too so that it can be rolled back to.
        """
        await self.store(fallback)
        await self.store(rules)
        return await self._activate_stored(
            rules.version, by=by, at=at, fallback=fallback, action=action, grace_s=grace_s
        )

    async def rollback(
        self, version: str, *, by: str, at: datetime, fallback: Rules, grace_s: float = 0.0
    ) -> ActivationResult:
        """Makes an earlier, stored version active again (:class:`UnknownVersion` if none)."""
        await self.store(fallback)
        await self.load(version)
        return await self._activate_stored(
            version, by=by, at=at, fallback=fallback, action="rollback", grace_s=grace_s
        )

    async def _activate_stored(
        self,
        version: str,
        *,
        by: str,
        at: datetime,
        fallback: Rules,
        action: Action,
        grace_s: float,
    ) -> ActivationResult:
        k = self._keys
        when = iso(at)
        not_before_ms = int((time.time() + grace_s) * 1000)
        outcome, previous = await self._activate(
            keys=[
                k.rules_active(),
                k.rules_version(version),
                k.rules_history(),
                k.reclassification(),
                k.reclassification_done(),
            ],
            args=[version, by, when, action, self._history_limit, not_before_ms, fallback.version],
        )
        if int(outcome) == -1:
            raise UnknownVersion(version)
        if int(outcome) == 0:
            return ActivationResult(changed=False, activation=None)
        await self._redis.publish(k.rules_channel(), version)
        return ActivationResult(
            changed=True,
            activation=Activation(
                version=version,
                by=by,
                at=when,
                action=action,
                previous_version=_text(previous) or None,
            ),
        )

    async def history(self, limit: int = 100) -> list[Activation]:
        """Activations, newest first."""
        entries = await self._redis.lrange(self._keys.rules_history(), 0, max(0, limit - 1))
        out: list[Activation] = []
        for raw in entries:
            e = orjson.loads(raw)
            out.append(
                Activation(
                    version=e["version"],
                    by=e["by"],
                    at=e["at"],
                    action=e["action"],
                    previous_version=e.get("previous_version") or None,
                )
            )
        return out

    # --- re-classification job --------------------------------------------------------------------

    async def progress(self) -> ReclassProgress:
        k = self._keys
        raw, done = await asyncio.gather(
            self._redis.hgetall(k.reclassification()),
            self._redis.scard(k.reclassification_done()),
        )
        fields = {_text(a): _text(b) for a, b in raw.items()}
        version = fields.get("version")
        shards_done = int(done)
        state: ReclassState
        if version is None:
            state = "none"
        elif shards_done >= SHARDS:
            state = "done"
        elif shards_done == 0 and not fields.get("started_at"):
            state = "pending"
        else:
            state = "running"
        return ReclassProgress(
            version=version,
            state=state,
            shards_total=SHARDS,
            shards_done=shards_done,
            customers=int(fields.get("customers") or 0),
            changes=int(fields.get("changes") or 0),
            activated_at=fields.get("activated_at"),
            started_at=fields.get("started_at"),
            finished_at=fields.get("finished_at"),
            not_before_ms=int(fields.get("not_before_ms") or 0),
        )

    async def shards_done(self) -> set[int]:
        members = await self._redis.smembers(self._keys.reclassification_done())
        return {int(m) for m in members}

    async def mark_started(self, version: str, at: datetime) -> None:
        """Sets ``started_at`` once (the first worker to begin)."""
        k = self._keys.reclassification()
        if _text(await self._redis.hget(k, "version")) == version:
            await self._redis.hsetnx(k, "started_at", iso(at))

    async def mark_shard_done(
        self, version: str, shard: int, *, customers: int, changes: int, at: datetime
    ) -> bool:
        """Records a shard as done for ``version``; False when the job moved on meanwhile."""
        k = self._keys
        result = await self._shard_done(
            keys=[k.reclassification(), k.reclassification_done()],
            args=[version, shard, customers, changes, iso(at), SHARDS],
        )
        return int(result) == 1
