# ruff: noqa: T201 - a command line prints its answers
"""``segments rules diff|activate|rollback|history|reclassify|suggest``: the rules registry from
the command line (same Redis, same registry as ``PUT /v1/rules``)."""

from __future__ import annotations

import asyncio
import getpass
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

from service.rules_admin import sample_moves
from service.rules_store import RulesRegistry, UnknownVersion
from service.segmentation.rules import Rules, RulesError, load_rules, parse_rules
from service.segmentation.rules_diff import diff_rules
from service.settings import Settings
from service.store.keys import Keys
from service.store.redis_client import AnyRedis, create_redis


def _who(by: str | None) -> str:
    return by or f"cli:{getpass.getuser()}"


def read_rules_file(path: str) -> Rules | None:
    """The file's rules, or None after printing every problem with its path."""
    try:
        return parse_rules(Path(path).read_text("utf-8"))
    except RulesError as exc:
        print(f"{path}: invalid rules", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem['path'] or '<document>'}: {problem['message']}", file=sys.stderr)
        return None


@asynccontextmanager
async def _registry(settings: Settings) -> AsyncIterator[tuple[AnyRedis, RulesRegistry]]:
    redis = create_redis(settings.redis)
    try:
        yield (
            redis,
            RulesRegistry(
                redis, Keys(settings.redis.key_prefix), history_limit=settings.rules.history_limit
            ),
        )
    finally:
        await redis.aclose()


async def _active(registry: RulesRegistry, fallback: Rules) -> Rules:
    version = await registry.active_version()
    return fallback if version is None else await registry.load(version)


async def diff(settings: Settings, path: str, against: str | None, sample: bool) -> int:
    proposed = read_rules_file(path)
    if proposed is None:
        return 1
    async with _registry(settings) as (redis, registry):
        try:
            base = (
                await registry.load(against)
                if against
                else await _active(registry, load_rules(settings.rules_file))
            )
        except UnknownVersion:
            print(f"no stored rules version {against!r}", file=sys.stderr)
            return 1
        changes = diff_rules(base, proposed)
        print(f"{base.version} -> {proposed.version}: {len(changes)} change(s)")
        for change in changes:
            print(f"  {change.describe()}")
        if sample:
            moves = await sample_moves(
                redis,
                registry.keys,
                current=base,
                proposed=proposed,
                now=datetime.now(UTC),
                size=settings.rules.dry_run_sample,
            )
            print(f"sample: {moves.customers} customers, {moves.moved} would move")
            for before, after, n in moves.moves:
                print(f"  {before} -> {after}: {n}")
    return 0


async def activate(settings: Settings, path: str, by: str | None) -> int:
    proposed = read_rules_file(path)
    if proposed is None:
        return 1
    async with _registry(settings) as (_, registry):
        fallback = load_rules(settings.rules_file)
        base = await _active(registry, fallback)
        result = await registry.activate(
            proposed,
            by=_who(by),
            at=datetime.now(UTC),
            fallback=fallback,
            grace_s=settings.rules.reclassify_grace_s,
        )
    if not result.changed:
        print(f"{proposed.version} is active already; nothing changed")
        return 0
    print(f"activated {proposed.version} (was {base.version}) by {_who(by)}")
    for change in diff_rules(base, proposed):
        print(f"  {change.describe()}")
    print(
        "customers are re-classified in the background (segments sweep, or "
        "segments rules reclassify)"
    )
    return 0


async def rollback(settings: Settings, version: str, by: str | None) -> int:
    async with _registry(settings) as (_, registry):
        try:
            result = await registry.rollback(
                version,
                by=_who(by),
                at=datetime.now(UTC),
                fallback=load_rules(settings.rules_file),
                grace_s=settings.rules.reclassify_grace_s,
            )
        except UnknownVersion:
            print(f"no stored rules version {version!r}", file=sys.stderr)
            return 1
    print(f"rolled back to {version}" if result.changed else f"{version} is active already")
    return 0


async def history(settings: Settings, limit: int) -> int:
    async with _registry(settings) as (_, registry):
        active = await _active(registry, load_rules(settings.rules_file))
        entries = await registry.history(limit)
        progress = await registry.progress()
    print(f"active: {active.version}")
    for e in entries:
        print(f"  {e.at}  {e.action:<8} {e.version}  by {e.by}  (was {e.previous_version})")
    print(
        f"re-classification: {progress.state} {progress.version or ''} "
        f"{progress.shards_done}/{progress.shards_total} shards, {progress.customers} customers, "
        f"{progress.changes} changes"
    )
    return 0


async def reclassify(settings: Settings) -> int:
    """Works on the current re-classification job until it is done (or SIGINT/SIGTERM)."""
    from consumers.segmenter import Segmenter
    from service.kafka import ProducerSink, create_producer, ensure_topics
    from service.reclassify import Reclassifier, run_reclassification
    from service.rules_runtime import RulesWatcher
    from service.store.profiles import RedisProfileStore

    await ensure_topics(settings.kafka)
    redis = create_redis(settings.redis)
    producer = create_producer(settings.kafka)
    await producer.start()
    watcher = RulesWatcher.from_settings(settings, redis, fallback=load_rules(settings.rules_file))
    await watcher.start()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    try:
        store = RedisProfileStore(
            redis, Keys(settings.redis.key_prefix), ring_size=settings.state.event_id_ring
        )
        segmenter = Segmenter(
            store,
            ProducerSink(producer),
            changes_topic=settings.kafka.changes_topic,
            rules=watcher.current,
        )
        worker = Reclassifier(
            settings,
            redis,
            store,
            segmenter,
            rules=watcher.current,
            clock=lambda: datetime.now(UTC),
        )
        totals = await run_reclassification(worker, stopping, until_done=True)
        progress = await worker.registry.progress()
    finally:
        await watcher.aclose()
        await producer.stop()
        await redis.aclose()
    print(
        f"re-classification {progress.state} for {progress.version}: this worker did "
        f"{totals.shards} shards, {totals.customers} customers, {totals.changes} changes"
    )
    return 0 if progress.state in ("done", "none") else 1


async def suggest(
    settings: Settings,
    out: str | None,
    seed: int,
    sample_size: int,
    k: int,
    base_file: str | None,
    as_of: datetime | None = None,
) -> int:
    from service.rules_suggest import suggest_rules

    async with _registry(settings) as (redis, registry):
        if base_file:
            base = read_rules_file(base_file)
            if base is None:
                return 1
        else:
            base = await _active(registry, load_rules(settings.rules_file))
        try:
            suggestion = await suggest_rules(
                redis,
                registry.keys,
                base,
                now=as_of or datetime.now(UTC),
                seed=seed,
                sample_size=sample_size,
                k=k,
            )
        except ValueError as exc:
            print(f"cannot suggest: {exc}", file=sys.stderr)
            return 1
    text = suggestion.render_yaml()
    if out:
        await asyncio.to_thread(Path(out).write_text, text, "utf-8")
        print(f"{out}: proposed rules, version {suggestion.rules.version}")
        for note in suggestion.notes:
            print(f"  {note}")
    else:
        print(text, end="")
    return 0
