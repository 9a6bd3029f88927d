"""Person, for the crash-safety tests: it answers a write, then dies by
SIGKILL before anything could publish the write's event, as a ``kill -9`` at
the worst moment would. Only a sweep, by another instance or after a restart,
can publish that event (tests/faults/test_fault_crashes.py)."""

import os
import signal
import threading

from nameko.extensions import DependencyProvider

from person import service
from reliable_events.outbox import Outbox

_held = threading.Event()  # a committed write's events were held back


class HeldOutbox(Outbox):
    """Writes its rows as person's does, and never hands them to the relay."""

    def committed(self, written):
        _held.set()


class DieAfterAnswer(DependencyProvider):
    """Kills the process once a worker that wrote has been answered (Nameko
    sends the RPC reply before it calls ``worker_result``)."""

    def worker_result(self, worker_ctx, result=None, exc_info=None):
        if _held.is_set():
            os.kill(os.getpid(), signal.SIGKILL)


class CrashingPersonService(service.PersonService):
    writer = service.write_path(HeldOutbox)
    die_after_answer = DieAfterAnswer()
