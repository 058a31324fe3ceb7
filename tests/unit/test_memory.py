"""FrozenSurvivors: what survives a full collection is frozen; a thaw frees the cycles that
became garbage while frozen."""

from __future__ import annotations

import asyncio
import gc
import weakref

from meshgate.memory import FrozenSurvivors


class Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the collector frees it


def test_survivors_are_frozen_and_a_thaw_frees_what_died_frozen() -> None:
    async def run() -> None:
        survivors = FrozenSurvivors(thaw_every_s=3600)
        survivors.start()
        try:
            node = Node()
            ref = weakref.ref(node)
            gc.collect()  # a full collection: node survives it, and is frozen
            assert gc.get_freeze_count() > 0
            del node
            gc.collect()
            assert ref() is not None  # frozen: the collector does not look at it
            assert survivors.thaw() >= 1
            assert ref() is None
        finally:
            await survivors.stop()
        assert survivors._after_collection not in gc.callbacks

    try:
        asyncio.run(run())
    finally:
        gc.unfreeze()
