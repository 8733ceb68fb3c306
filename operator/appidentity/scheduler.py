"""One timer and one queue for every identity, instead of a task and a timer each."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

log = logging.getLogger("appidentity")
ERROR_BACKOFF = 5.0
# Turns at once (`run --workers`). A turn mostly waits on the API server: installed as deploy/
# has it, each Role and RoleBinding the operator creates waits about 0.1 s for the API
# server's escalation check (bench/README.md), and 8 workers left a third of the CPU idle.
WORKERS = 24


class Scheduler:
    """An identity is due at one time (the soonest asked for), its `turn` runs in the pool and
    never twice at once; asked for while it runs, it runs again right after. A turn returns the
    seconds until the next one, or None for no more. Used from the event loop only."""

    def __init__(self, turn: Callable[[str], float | None], alive: Callable[[str], bool]) -> None:
        self._turn = turn
        self._alive = alive
        self._heap: list[tuple[float, str]] = []
        self._due: dict[str, float] = {}
        self._running: set[str] = set()
        self._again: set[str] = set()
        self._wake = asyncio.Event()

    def at(self, key: str, when: float) -> None:
        if self._due.get(key, float("inf")) <= when:
            return
        self._due[key] = when
        heapq.heappush(self._heap, (when, key))
        self._wake.set()

    def now(self, key: str) -> None:
        self.at(key, asyncio.get_running_loop().time())

    async def run(self, pool: Executor) -> None:
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            while self._heap and self._heap[0][0] <= now:
                when, key = heapq.heappop(self._heap)
                if self._due.get(key) != when:
                    continue  # moved earlier since
                del self._due[key]
                if key in self._running:
                    self._again.add(key)
                elif self._alive(key):
                    self._running.add(key)
                    future = loop.run_in_executor(pool, self._turn, key)
                    future.add_done_callback(functools.partial(self._done, loop, key))
            timeout = self._heap[0][0] - now if self._heap else None
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    def _done(self, loop: asyncio.AbstractEventLoop, key: str, future: Any) -> None:
        self._running.discard(key)
        try:
            wait: float | None = future.result()
        except Exception:  # a bug, not the API server: logged, and tried again later
            log.exception("%s: reconcile failed, retrying in %.0fs", key, ERROR_BACKOFF)
            wait = ERROR_BACKOFF
        if not self._alive(key) or wait is None:
            self._again.discard(key)
            return
        if key in self._again:
            self._again.discard(key)
            wait = 0.0
        self.at(key, loop.time() + wait)
