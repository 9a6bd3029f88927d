"""What a replica is rebuilt from, over RPC: person's event history
(person/history.py) and its current state as events (person/state.py). A
part of ``PersonService`` (person/service.py), which gives it ``self.db``."""

from contracts.errors import HistoryTrimmed, InvalidInput
from person.history import history_page
from person.state import state_page
from reliable_events.rpc import rpc


class ReplicaSources:
    """``PersonService``'s ``event_history`` and ``current_state``."""

    @rpc(expected_exceptions=(InvalidInput, HistoryTrimmed))
    def event_history(self, after_position=0, limit=1000):
        """Person's event history, one page in ``position`` order: for a new
        subscriber or a lost replica to rebuild from (``score.rebuild``).

        Example (``nameko shell``)::

            >>> page = n.rpc.person.event_history(after_position=0, limit=2)
            >>> page["events"][0]
            {'event_id': 'e57ffa9d-...', 'event_type': 'person_created',
             'occurred_at': '2026-...', 'cpf': '52998224725', 'sequence': 1,
             'data': {'name': 'Ana', ...}, 'position': 1}
            >>> page["last_position"], page["head_position"]
            (2, 4)
            >>> n.rpc.person.event_history(after_position=page["last_position"], limit=2)

        The page is the first ``limit`` (1..5000) events with ``position >
        after_position``, each the envelope as published plus its ``position``.
        ``last_position`` is the last one returned (``after_position`` if
        none): pass it back for the next page. ``head_position`` is the
        highest position committed when the page was read (0 for no history),
        and a settled one: every lower position has committed or never will
        (person/history.py), so a reader of the history alone misses nothing.
        The page never goes past it. A page waits for the writes in flight to
        end, at most 5 s; past that it fails with the database's lock
        timeout, and the rebuild step that asked for it fails and can run again.

        Every event is returned, published or still pending. Read only: an
        index range scan on the outbox's primary key. Raises ``InvalidInput``
        for a bad ``after_position`` or ``limit``, ``HistoryTrimmed`` for an
        ``after_position`` below the highest position the retention policy
        deleted (``EVENT_HISTORY_RETENTION``): rebuild from the start.
        """
        with self.db.get_session() as session:
            return history_page(session, after_position, limit)

    @rpc(expected_exceptions=InvalidInput)
    def current_state(self, after=None, limit=1000):
        """Person's current state as the events that built it, one page: for a
        lost or new replica to rebuild from without the history the retention
        deleted (``score.rebuild``; the paging is person/state.py's).

        Example (``nameko shell``)::

            >>> page = n.rpc.person.current_state(limit=3)
            >>> page["events"][0]
            {'event_id': 'e57ffa9d-...', 'event_type': 'person_created',
             'occurred_at': '2026-...', 'cpf': '52998224725', 'sequence': 1,
             'data': {'name': 'Ana', ...}}
            >>> page["next"], page["head_position"]
            ('person:52998224725', 4)
            >>> n.rpc.person.current_state(after=page["next"], limit=3)

        Erasures come first (``person_erased``, by the CPF's hash), then each
        person with its items, as the events that announced them: their ids,
        sequences and times as published. A page ends at ``limit`` (1..5000)
        events, a person never split; ``next`` (None after the last page) is
        passed back as ``after``. ``head_position``: on the first page, the
        history's settled head, every event up to which is in this and every
        later page's state (a rebuild takes the history's tail after it); on
        the others, the highest position committed. Raises ``InvalidInput``
        for a bad ``after`` or ``limit``.
        """
        with self.db.get_session() as session:
            return state_page(session, after, limit)
