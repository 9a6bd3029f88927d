"""Read-your-writes: wait, bounded, until score's replica holds a given write.

Every write answers with the ``sequence`` its event got in the person's
history. A read that passes it back (``min_sequence``) is answered once
score's ``applied_sequence`` for that CPF reaches it. Nothing polls: the
read tells score it waits (``get_score(..., min_sequence=n)``), score
announces the commits that move a person a read waits for
(``replica_advanced``, see :mod:`contracts.events`), and this gateway's own
exclusive queue receives them, waking only the reads waiting for those
CPFs, which then read again (as does every waiting read when this queue
is made again after a lost connection: notices sent meanwhile reached
nobody). Past the bound
(``READ_YOUR_WRITES_TIMEOUT`` seconds) the read gets the current value,
marked stale.

The notices are consumed on the container's shared queue consumer without
spawning a worker: a wake-up must not wait for a worker slot held by the
very reads it would wake.
"""

import collections
import contextlib
import logging
import threading
import time

from kombu import Queue
from nameko.events import get_event_exchange
from nameko.extensions import DependencyProvider

from contracts.events import NOTICE_QUEUE_PREFIX, REPLICA_ADVANCED, SCORE_NOTICES
from contracts.scores import APPLIED_SEQUENCE
from reliable_events.queues import QueuePerConnection

_log = logging.getLogger(__name__)


class ReplicaWatch(QueuePerConnection, DependencyProvider):
    """Hands workers itself: :meth:`read_at_least` waits for a CPF's replica."""

    def setup(self):
        config = self.container.config
        self.timeout = float(config["READ_YOUR_WRITES_TIMEOUT"])
        self.exchange = get_event_exchange(SCORE_NOTICES, config)
        self._waiting = collections.defaultdict(set)  # cpf -> events of the reads waiting
        self.queue_consumer.register_provider(self)

    def new_queue(self, name_suffix):
        # A queue per gateway instance (every instance hears every notice) and
        # connection: notices for nobody are dropped by the exchange.
        return Queue(
            f"{NOTICE_QUEUE_PREFIX}{name_suffix}",
            exchange=self.exchange,
            routing_key=REPLICA_ADVANCED,
            durable=False,
            exclusive=True,
        )

    def stop(self):
        self.queue_consumer.unregister_provider(self)

    def kill(self):
        self.queue_consumer.unregister_provider(self)

    def get_dependency(self, worker_ctx):
        return self

    def connection_ready(self):
        # A notice score sent while this gateway had no queue (from the old
        # connection's end until now) reached nobody: every waiting read reads
        # again now instead of waiting out its bound.
        self._wake(list(self._waiting))

    def handle_message(self, body, message):
        self.queue_consumer.ack_message(message)
        cpfs = body.get("cpfs") if isinstance(body, dict) else None
        if not isinstance(cpfs, list):
            _log.warning("ignored a malformed %s notice: %r", REPLICA_ADVANCED, body)
            return
        self._wake(cpfs)

    def _wake(self, cpfs) -> None:
        """Wake the reads waiting for any of ``cpfs``: each reads again."""
        for cpf in cpfs:
            for advanced in self._waiting.get(cpf, ()):
                advanced.set()

    @contextlib.contextmanager
    def _watching(self, cpf):
        advanced = threading.Event()
        self._waiting[cpf].add(advanced)
        try:
            yield advanced
        finally:
            self._waiting[cpf].discard(advanced)
            if not self._waiting[cpf]:
                del self._waiting[cpf]

    def read_at_least(self, cpf: str, sequence: int, read) -> tuple:
        """Call ``read()`` until its ``applied_sequence`` reaches ``sequence``
        or the bound runs out; return ``(last result or None, stale, waited seconds)``.

        ``read`` returns the score dict, or None for a CPF the replica lacks,
        or an object with an ``applied_sequence`` attribute (an erasure).
        """

        def reached(result):
            if result is None:
                return False
            applied = result[APPLIED_SEQUENCE] if isinstance(result, dict) else result.applied_sequence
            return applied >= sequence

        start = time.monotonic()
        deadline = start + self.timeout
        with self._watching(cpf) as advanced:
            while True:
                # Cleared before the read: a notice that lands between the read
                # and the wait still wakes the wait.
                advanced.clear()
                result = read()
                remaining = deadline - time.monotonic()
                if reached(result) or remaining <= 0:
                    return result, not reached(result), time.monotonic() - start
                if not advanced.wait(remaining):
                    # No notice in time; one last read covers a notice that was lost.
                    result = read()
                    return result, not reached(result), time.monotonic() - start
