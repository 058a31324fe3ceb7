"""Long-lived objects kept out of the garbage collector's full collections.

A full collection walks every object the collector tracks. With 50,000 HTTP instances
registered, each one paused the event loop for up to 537 ms, longer as the registry grew,
though it freed nothing (bench/RESULTS.md, 2026-11-30). Whatever survives a full collection
is long-lived: `FrozenSurvivors` freezes it after each one, so the next walk only what is new
(30-35 ms at the same size). A frozen object that later becomes garbage inside a reference
cycle would never be freed, so every `thaw_every_s` all is unfrozen and collected once (one
full-length pause) and frozen again: what such cycles hold is bounded by that period.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from typing import Any

log = logging.getLogger("meshgate.memory")


class FrozenSurvivors:
    """`start()` in a running loop, `stop()` before it ends."""

    def __init__(self, thaw_every_s: float = 600.0) -> None:
        self.thaw_every_s = thaw_every_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Collect and freeze what exists now (start-up's modules, models and the like: it
        lives as long as the process), then each full collection's survivors."""
        self.thaw()
        gc.callbacks.append(self._after_collection)
        self._task = asyncio.create_task(self._thaw_loop(), name="gc thaw")

    async def stop(self) -> None:
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self._after_collection)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    @staticmethod
    def _after_collection(phase: str, info: dict[str, Any]) -> None:
        if phase == "stop" and info["generation"] == 2:
            gc.freeze()

    @staticmethod
    def thaw() -> int:
        """Unfreeze, collect everything once, freeze the survivors again; what was freed."""
        gc.unfreeze()
        freed = gc.collect()  # (freezes the survivors, through the callback, when installed)
        gc.freeze()
        return freed

    async def _thaw_loop(self) -> None:
        while True:
            await asyncio.sleep(self.thaw_every_s)
            freed = self.thaw()
            if freed:
                log.info("full collection of frozen objects freed %d", freed)
