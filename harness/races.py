"""Two transactions made to race deterministically on the real PostgreSQL:
one held open just before its commit (its locks held), the other run
meanwhile, to see what it waits on and what it does once the first commits.
"""

import threading

import eventlet
from sqlalchemy import text

from harness.waits import wait_for

# How long a competing write is given to reach a lock wait (it takes milliseconds).
BLOCK_TIMEOUT = 10
JOIN_TIMEOUT = 15

# Locks not granted, in this database, and which kind (advisory, transactionid, ...).
WAITING_LOCKS = text(
    "SELECT l.locktype FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
    " WHERE NOT l.granted AND a.datname = current_database()"
)


class Gate:
    """Holds a transaction open just before its commit, until :meth:`open`."""

    def __init__(self):
        self.reached = threading.Event()  # the transaction is at its commit, its locks held
        self._open = threading.Event()

    def open(self):
        self._open.set()

    def session_class(self, base):
        gate = self

        class GatedSession(base):
            def commit(self):
                gate.reached.set()
                if not gate._open.wait(JOIN_TIMEOUT * 2):
                    raise RuntimeError("the test never let this transaction commit")
                super().commit()

        return GatedSession


def waiting_locks(engine) -> list:
    with engine.connect() as conn:
        return [row[0] for row in conn.execute(WAITING_LOCKS)]


def race(gate, holder, competitor, engine):
    """Run ``holder`` until it waits at ``gate`` (its locks held), then
    ``competitor``; wait until the competitor waits on a lock (or ended); let the
    holder commit. Returns (holder's result, competitor's result, the kinds
    of lock waited on in the database while the holder was held open, and
    whether the competitor had ended before the holder committed)."""
    holding = eventlet.spawn(holder)
    competing = None
    try:
        assert gate.reached.wait(BLOCK_TIMEOUT), "the held transaction never reached its commit"
        competing = eventlet.spawn(competitor)
        # Blocked on a lock, or (a broken ordering) done already: either way the
        # test goes on and the result says which.
        waited = wait_for(
            lambda: waiting_locks(engine) or (["<none: it ended>"] if competing.dead else None),
            BLOCK_TIMEOUT,
            "the competing write to wait on a lock or end",
            0.02,
        )
        ended_early = competing.dead
    finally:
        gate.open()
    with eventlet.Timeout(JOIN_TIMEOUT, AssertionError("the racing writes did not finish")):
        held = holding.wait()
        competed = competing.wait()
    return held, competed, waited, ended_early
