"""One batch scheduler, shared by everything that works in batches: the group
commit (writes), the event handlers (events applied) and the relay (events
published).

Items wait in arrival order. A dispatcher greenthread takes every item
waiting, up to ``size``, as one batch and launches it, while fewer than
``concurrency`` batches run. Under light load a batch is one item and nothing
waits; under load one batch's fixed cost (a transaction, a commit, a publish
round trip) is shared by many items.

Items handed back with :meth:`Batches.add_alone` (those of a batch that failed
as a whole) run first, one per batch, so the one that fails fails alone.

Launching happens on the dispatcher, never in a batch: a batch waiting for a
free slot while holding one could deadlock the pool.
"""

import collections
import threading
from collections.abc import Callable


class Batches:
    """``launch(batch)`` starts a batch (a list of items) and returns at once;
    whoever runs the batch calls :meth:`finished` exactly once when it ends,
    whatever happened."""

    def __init__(self, launch: Callable[[list], None], size: int, concurrency: int):
        self.launch = launch
        self.size = size
        self.concurrency = concurrency
        self._waiting = collections.deque()
        self._alone = collections.deque()
        self._running = 0
        self._wake = threading.Event()
        self._stopping = False
        self._dispatcher = None

    def add(self, *items) -> None:
        self._waiting.extend(items)
        self._wake.set()

    def add_alone(self, items) -> None:
        """Run each of ``items`` in a batch of its own, before any waiting item."""
        self._alone.extend(items)
        self._wake.set()

    def take_waiting(self) -> list:
        """Every item waiting for a batch, no longer waiting: the caller answers them."""
        items = [*self._alone, *self._waiting]
        self._alone.clear()
        self._waiting.clear()
        return items

    def finished(self) -> None:
        self._running -= 1
        self._wake.set()

    def busy(self) -> bool:
        return bool(self._waiting or self._alone or self._running)

    def start(self, spawn_managed_thread) -> None:
        self._dispatcher = spawn_managed_thread(self._dispatch)

    def stop(self) -> None:
        """Run what was added, wait for every batch to finish, then return."""
        self._stopping = True
        self._wake.set()
        if self._dispatcher is not None:
            self._dispatcher.wait()

    def kill(self) -> None:
        if self._dispatcher is not None:
            self._dispatcher.kill()

    def _dispatch(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            while self._running < self.concurrency and (self._alone or self._waiting):
                if self._alone:
                    batch = [self._alone.popleft()]
                else:
                    batch = [self._waiting.popleft() for _ in range(min(self.size, len(self._waiting)))]
                self._running += 1
                try:
                    self.launch(batch)
                except BaseException:
                    self._running -= 1
                    raise
            if self._stopping and not self.busy():
                return
