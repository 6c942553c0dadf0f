"""The consumer's collector on a clock: with automatic collection off, a reference cycle is
freed by the next timed collection, and not before."""

from __future__ import annotations

import asyncio
import gc
import weakref

from consumers.runner import collect_garbage_every


class _Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cyclic collector frees it


async def test_a_cycle_is_freed_by_the_timed_collection() -> None:
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        node = _Node()
        alive = weakref.ref(node)
        del node
        await asyncio.sleep(0.05)
        assert alive() is not None  # nothing collects it on its own
        task = asyncio.create_task(collect_garbage_every(0.05))
        await asyncio.sleep(0.3)
        task.cancel()
        assert alive() is None
    finally:
        if was_enabled:
            gc.enable()
