"""The score service: a replica of person's events and the credit score from it.

It never calls person to answer a read: the replica is the point (SEED.md).
Each handler checks its events against the inbox (a watermark per person)
and applies the new ones in one transaction, so a redelivered or replayed
event changes nothing. After a commit it tells the gateways which CPFs
advanced that a read waits for (score/notices.py: read-your-writes), and it
can refill its replica from person's history (score/rebuild.py).
"""

import logging
from functools import partial

from nameko.dependency_providers import Config
from nameko.rpc import RpcProxy
from sqlalchemy import text

import reliable_events.green  # noqa: F401  (cooperative psycopg2, before any connection)
from contracts.cpf import InvalidCPF, normalize_cpf
from contracts.erasure import PersonalDataKey
from contracts.errors import InvalidInput, ScoreNotFound
from contracts.events import EVENT_TYPES, PERSON_CREATED, PERSON_ERASED, PERSON_EVENTS, REPLICA_ADVANCED
from contracts.rebuild import RebuildError
from contracts.rebuild import run as run_to_head
from observability.logs import CallContext
from observability.metrics import (
    DEAD_LETTERS,
    EVENT_METRICS,
    RpcMetrics,
    metrics_http,
    metrics_response,
    read_at_scrape,
)
from reliable_events.database import Database
from reliable_events.deadletters import DeadLetters
from reliable_events.handlers import reliable_handler
from reliable_events.inbox import claim
from reliable_events.rpc import rpc
from score import reads, replica
from score import rebuild as rebuilder
from score.models import ScoreBase
from score.notices import NoticeDispatcher

_log = logging.getLogger(__name__)

# Score's handlers: person's events, counted in score's metrics.
handles = partial(reliable_handler, PERSON_EVENTS, metrics=EVENT_METRICS)


def _set_dead_letter_gauges(depths):
    for queue, depth in depths.items():
        DEAD_LETTERS.labels(queue).set(depth)


class ScoreService:
    name = "score"

    # No pre-ping: it costs a round trip before every batch applied (4 % of
    # score's CPU samples in make bench's profile). A handler that meets a
    # connection the database dropped (after a restart) fails once and is
    # retried from its retry queue; the pool then replaces them all.
    db = Database(ScoreBase, engine_options={"pool_pre_ping": False})
    dead_letters = DeadLetters()
    hasher = PersonalDataKey()
    call_context = CallContext()
    rpc_metrics = RpcMetrics()
    # A wake-up for waiting reads (score/notices.py), not data: neither
    # persistent nor confirmed, and never retried.
    notify = NoticeDispatcher(use_confirms=False, delivery_mode=1, retry=False)
    # Only the rebuild calls person (its event history, score/rebuild.py); reads never do.
    person = RpcProxy("person")
    config = Config()

    # One handler per event type, ``on_<type>`` (a test checks that every type
    # of contracts.events has its handler). Each gets the events that
    # queued up while its previous batches ran and applies them in one
    # transaction (one event each under light load, up to EVENT_BATCH_SIZE when
    # catching up on a backlog).

    @handles(PERSON_CREATED)
    def on_person_created(self, events):
        return self._apply(events)

    @handles("income_added")
    def on_income_added(self, events):
        """Apply ``income_added`` events: the person's income is scored."""
        return self._apply(events)

    @handles("asset_added")
    def on_asset_added(self, events):
        """Apply ``asset_added`` events: the person's asset is scored."""
        return self._apply(events)

    @handles("debt_added")
    def on_debt_added(self, events):
        """Apply ``debt_added`` events: the person's debt is scored."""
        return self._apply(events)

    @handles(PERSON_ERASED)
    def on_person_erased(self, events):
        """Apply ``person_erased`` events: the person's replica rows go, and
        its dead letters; its events still in flight will be dropped."""
        return self._apply(events)

    def _apply(self, events):
        """Drop the events of erased people (score/replica.py), keep those
        not applied before (the inbox: each person's watermark,
        reliable_events/inbox.py) and apply them, all in one transaction
        (whoever calls: a handler, or a rebuild); then tell the gateways
        which CPFs advanced, if a read waits for them (an erasure: always).
        The events are all of one type. Returns those applied."""
        event_type = events[0]["event_type"]
        erasing = event_type == PERSON_ERASED
        # An erasure's key is the CPF's hash already.
        hashes = {key: key if erasing else self.hasher.hash(key) for key in {PERSON_EVENTS.key(e) for e in events}}
        with self.db.get_session() as session:
            admitted, marks, watched = replica.admit(session, events, hashes, erasing)
            fresh, moved = claim(marks, admitted, PERSON_EVENTS.key, self.name)
            if erasing:
                advanced = replica.erase(session, fresh)
                if fresh:
                    # Before the commit: if it fails, the erasure is retried, and this with it.
                    self.dead_letters.purge(match=replica.names_any({PERSON_EVENTS.key(e) for e in fresh}, self.hasher))
            else:
                replica.EFFECTS[event_type](session, fresh)
                # Announced only to a read that waits (score/replica.py, "Waiting reads").
                advanced = [cpf for cpf in replica.save_marks(session, moved, hashes) if cpf in watched]
        # The handlers' entrypoint logs each applied event (reliable_events.handlers).
        if advanced:
            self._announce(advanced)
        return fresh

    def _announce(self, cpfs):
        try:
            self.notify(REPLICA_ADVANCED, {"cpfs": cpfs})
        except Exception as exc:  # the events are applied; only the wake-up is lost
            _log.warning("could not announce %d advanced CPFs: %r", len(cpfs), exc)

    @metrics_http("GET", "/metrics")
    def metrics(self, request):
        """Prometheus metrics of this instance, on ``METRICS_ADDRESS["score"]``.

        Example: ``curl localhost:9102/metrics`` -> ``events_applied_total{event_type="income_added"} 1.0``,
        ``event_propagation_lag_seconds_bucket{...}``, ``dead_letters{queue="..."} 0.0``...
        """
        read_at_scrape("dead_letters", self.dead_letters.depth, _set_dead_letter_gauges)
        return metrics_response()

    @rpc(expected_exceptions=(ScoreNotFound, InvalidInput))
    def get_score(self, cpf, person_known=False, min_sequence=None):
        """The credit score of a CPF, from score's own replica.

        Example (``nameko shell``)::

            >>> n.rpc.score.get_score("52998224725")
            {'cpf': '52998224725', 'score': 4970,
             'breakdown': {'income': 20, 'asset': 5000, 'debt': -50},
             'items': {'income': 1, 'asset': 1, 'debt': 1},
             'last_sequence': 4, 'applied_sequence': 4, 'updated_at': '...'}

        A CPF known with no items scores 0. Raises ``ScoreNotFound`` for a CPF
        score has never seen or has erased (its ``applied_sequence``: the
        erasure's sequence, 0 if none), unless the caller says person knows
        it (``person_known``): then it is the empty score (score has not heard
        of the person yet; it never asks person itself). ``InvalidInput`` for
        a malformed CPF, or a ``min_sequence`` that is not an integer >= 1.

        ``min_sequence``: the caller will wait for the person's events up to
        it (read-your-writes, gateway/freshness.py). If the replica is short
        of it, score registers the wait, for ``READ_YOUR_WRITES_TIMEOUT``
        seconds, and reads again: the batch that brings the person there
        announces it (``replica_advanced``)::

            >>> n.rpc.score.get_score("52998224725", min_sequence=5)
            {..., 'applied_sequence': 4, ...}   # and a notice once 5 is applied
        """
        try:
            cpf = normalize_cpf(cpf)
        except InvalidCPF as exc:
            raise InvalidInput("Invalid CPF.", {"cpf": [exc.message]}) from exc
        if min_sequence is not None and (
            isinstance(min_sequence, bool) or not isinstance(min_sequence, int) or min_sequence < 1
        ):
            raise InvalidInput("Invalid min_sequence.", {"min_sequence": ["Must be an integer >= 1."]})
        result = reads.score_or_wait(
            self.db,
            cpf,
            self.hasher.hash(cpf),
            person_known,
            min_sequence,
            float(self.config["READ_YOUR_WRITES_TIMEOUT"]),
        )
        if isinstance(result, ScoreNotFound):
            raise result
        return result

    @rpc
    def health(self):
        """Database reachability and the dead letters waiting per handler.

        Example::

            >>> n.rpc.score.health()
            {'service': 'score', 'database': 'ok',
             'dead_letters': {'evt-person-income_added--score.on_income_added': 0, ...}}
        """
        with self.db.get_session() as session:
            session.execute(text("SELECT 1"))
        return {"service": "score", "database": "ok", "dead_letters": self.dead_letters.depth()}

    @rpc
    def list_dead_letters(self, event_id=None):
        """Events that failed every attempt (or were malformed), with why and when.

        Example::

            >>> n.rpc.score.list_dead_letters()
            [{'queue': 'evt-person-income_added--score.on_income_added',
              'event_id': '43eb6e47-...', 'event_type': 'income_added',
              'reason': 'failed 4 attempts; last error OperationalError: ...',
              'attempts': 4, 'first_failure': '2026-...', 'last_failure': '2026-...'}]
        """
        return self.dead_letters.list(event_id)

    @rpc
    def inspect_dead_letter(self, event_id):
        """One event's dead letters with their full body and headers.

        Example: ``n.rpc.score.inspect_dead_letter("43eb6e47-...")``
        """
        return self.dead_letters.inspect(event_id)

    @rpc
    def replay_dead_letters(self, event_id=None):
        """Send dead letters (all, or one event's) back to their handler; an
        event already applied is skipped by the inbox. Returns what was replayed.

        Example: ``n.rpc.score.replay_dead_letters()`` after fixing the cause.
        """
        return self.dead_letters.replay(event_id)

    @rpc
    def purge_dead_letters(self, event_id=None):
        """Delete dead letters (all, or one event's) for good. Returns what was deleted.

        Example: ``n.rpc.score.purge_dead_letters("43eb6e47-...")``
        """
        return self.dead_letters.purge(event_id)

    @rpc(expected_exceptions=RebuildError)
    def rebuild_step(self, from_position=None, page_size=rebuilder.DEFAULT_PAGE_SIZE):
        """Apply one page to the replica: of person's current state, then of
        its history's tail (see :mod:`score.rebuild`); the command line
        ``python -m ops.rebuild`` calls this page after page.

        Example (``nameko shell``)::

            >>> n.rpc.score.rebuild_step(0, 1000)   # from the start: the state's first page
            {'phase': 'state', 'from_position': 10500, 'position': 10500, 'fetched': 1000,
             'applied': 1000, 'skipped': 0, 'malformed': 0, 'malformed_positions': [],
             'head_position': 10500, 'done': False}
            >>> n.rpc.score.rebuild_step()   # from the checkpoint: the state's next page, then the tail

        ``from_position`` 0 starts from the start, ``n`` the history's tail
        after position ``n``, None from the checkpoint (the start if none).
        Events already applied (live or before) are skipped by the inbox.
        Raises ``RebuildError`` for bad arguments, when person does not
        answer, or when the tail asked for is older than person's retention.
        """
        fetch, fetch_state = rebuilder.fetch_from(self.person)
        return rebuilder.step(
            fetch=fetch,
            fetch_state=fetch_state,
            apply=self._apply,
            db=self.db,
            event_types=EVENT_TYPES,
            from_position=from_position,
            page_size=page_size,
        )

    @rpc(expected_exceptions=RebuildError)
    def rebuild(self, from_position=None, page_size=rebuilder.DEFAULT_PAGE_SIZE):
        """Rebuild the replica: person's current state, then its history's
        tail up to the head as of the state's last page (what commits later
        arrives live, or with the next rebuild). Live events may keep being
        applied meanwhile, or not; either way an event is applied once.

        Example (``nameko shell``)::

            >>> n.rpc.score.rebuild(0)   # from the start; rebuild() resumes from the checkpoint
            {'from_position': 10500, 'target_position': 10512, 'pages': 12, 'fetched': 10512,
             'applied': 10512, 'skipped': 0, 'malformed': 0, 'malformed_positions': [],
             'position': 10512, 'seconds': 3.1, 'events_per_second': 3390.9}
        """
        return run_to_head(
            lambda start, size: self.rebuild_step(start, size),
            from_position=from_position,
            page_size=page_size,
        )
