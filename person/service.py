"""The person service: the source of truth for people and their items.

Every write goes one way (:mod:`reliable_events.group_commit`): a method loads
its input and submits it; the writes submitted at the same time are applied
together (``person/writes.py``) in one transaction with their outbox rows,
their idempotency key claimed and answer stored if a client gave one; the
outbox's relay then announces the events on ``person.events``
(:mod:`reliable_events.relay`), its sweep what the relay could not
(:mod:`reliable_events.sweep`).

The item methods (``add_income``, ``add_asset``, ``add_debt``) are one per
kind declared in :mod:`contracts.kinds` (a test checks that every kind has
its method), each a line that calls the shared ``_add_item``. ``erase_person``
takes the same way, alone in its transaction (``person/writes.py`` ``erase``).
"""

import logging

from nameko.timer import timer
from sqlalchemy import text

import reliable_events.green  # noqa: F401  (cooperative psycopg2, before any connection)
from contracts.erasure import PersonalDataKey
from contracts.errors import InvalidInput, PersonAlreadyExists, PersonNotFound
from contracts.events import PERSON_EVENTS
from contracts.idempotency import IdempotencyKeyReused
from contracts.kinds import BY_NAME, KINDS, ItemKind
from observability.logs import CallContext
from observability.metrics import (
    EVENT_METRICS,
    OUTBOX_OLDEST_AGE,
    OUTBOX_PENDING,
    RpcMetrics,
    metrics_http,
    metrics_response,
    read_at_scrape,
)
from person import batched_writes, replica_sources, writes
from person.models import Person, PersonBase, idempotency_keys, outbox
from person.schemas import ITEM_SCHEMAS, CreatePersonSchema, PersonOutSchema, load_cpf, load_input
from reliable_events.database import Database, vacuum_unless_autovacuum
from reliable_events.group_commit import GroupCommit
from reliable_events.idempotency import IdempotencyKeys, KeyReused, request_hash
from reliable_events.outbox import Outbox
from reliable_events.retention import retention_timer
from reliable_events.rpc import rpc
from reliable_events.sweep import sweep_timer

_log = logging.getLogger(__name__)

# The caller's mistakes: answered as errors, not logged as the service's failures.
CLIENT_ERRORS = (InvalidInput, PersonNotFound, PersonAlreadyExists, IdempotencyKeyReused)

BY_RPC_METHOD = {kind.rpc_method: kind for kind in KINDS}
WRITE_METHODS = ("create_person", *BY_RPC_METHOD)  # what write_many runs
WRITE_ARGS = {"create_person": "[person]", **{method: "[cpf, item]" for method in BY_RPC_METHOD}}


def _set_outbox_gauges(backlog):
    OUTBOX_PENDING.set(backlog["pending"])
    OUTBOX_OLDEST_AGE.set(backlog["oldest_pending_age_seconds"])


def write_path(outbox_type: type[Outbox] = Outbox) -> GroupCommit:
    """Person's write path: its writes, in batches, with their outbox rows and
    clients' keys (``outbox_type``: the crash tests' holds its events back)."""
    return GroupCommit(
        PersonBase,
        writes.PersonWrites(),
        outbox_type(PersonBase, outbox, PERSON_EVENTS, metrics=EVENT_METRICS),
        idempotency_keys,
    )


# nameko run takes every class with entrypoints in this module: the modules, not the classes, are imported.
class PersonService(replica_sources.ReplicaSources, batched_writes.BatchedWrites):
    name = "person"
    client_errors = CLIENT_ERRORS
    write_methods = WRITE_METHODS

    db = Database(PersonBase)
    idempotency = IdempotencyKeys(idempotency_keys)
    writer = write_path()
    hasher = PersonalDataKey()
    call_context = CallContext()
    rpc_metrics = RpcMetrics()

    @rpc(expected_exceptions=CLIENT_ERRORS)
    def create_person(self, person, idempotency_key=None, request_id=None):
        """Create a person; announces ``person_created``.

        Example (``nameko shell``)::

            >>> n.rpc.person.create_person({"cpf": "529.982.247-25", "name": "Ana",
            ...     "address": "Rua A, 1", "date_of_birth": "1990-05-01"})
            {'cpf': '52998224725', 'name': 'Ana', 'address': 'Rua A, 1',
             'date_of_birth': '1990-05-01', 'created_at': '...',
             'incomes': [], 'assets': [], 'debts': [], 'sequence': 1}

        ``sequence`` is the position of the event this write produced in the
        person's history (1 for the creation, +1 per item; a CPF erased before
        goes on after its erasure's); a reader passes it to the score read to
        see this write (read-your-writes).

        With ``idempotency_key``, a retry of the same request returns the first
        answer and writes nothing (see :mod:`reliable_events.idempotency`).
        ``request_id`` (the gateway's, one per HTTP request) makes the same
        request delivered again by the broker answer the first answer.

        Raises ``InvalidInput`` (fields named), ``PersonAlreadyExists`` or
        ``IdempotencyKeyReused`` (the key was used for another request).
        """
        return self._submit(*self._prepared("create_person", (person,)), idempotency_key, request_id)

    @rpc(expected_exceptions=CLIENT_ERRORS)
    def get_person(self, cpf):
        """Read a person with all incomes, assets and debts.

        Example::

            >>> n.rpc.person.get_person("52998224725")
            {'cpf': '52998224725', 'name': 'Ana', ...,
             'incomes': [{'id': 1, 'type': 'renting', 'value': '1000.00', ...}],
             'assets': [], 'debts': []}

        Raises ``InvalidInput`` for a malformed CPF, ``PersonNotFound``.
        """
        cpf = load_cpf(cpf)
        with self.db.get_session() as session:
            row = session.get(Person, cpf)
            if row is None:
                raise PersonNotFound(f"No person with CPF {cpf}.")
            return PersonOutSchema().dump(row)

    @rpc(expected_exceptions=CLIENT_ERRORS)
    def erase_person(self, cpf, erased_by="rpc", request_id=None):
        """Erase a person (LGPD): announces ``person_erased``.

        Example (``nameko shell``)::

            >>> n.rpc.person.erase_person("52998224725", erased_by="ana@dpo")
            {'erased': True, 'sequence': 5, 'erased_at': '2026-...'}

        In one transaction: the person's row and items, its whole event
        history in the outbox (published or not) and the answers stored for
        its idempotent writes are deleted; an audit row records when, by whom
        (``erased_by``: a name, never a secret) and the CPF's keyed hash; the
        ``person_erased`` event, keyed by that hash and numbered after the
        person's last event (``sequence``), is added to the outbox. Score
        deletes its replica of the person when it applies that event, and
        drops the person's events numbered before it that are still in
        flight. The same CPF may be created again; its events go on after
        ``sequence``.

        Raises ``InvalidInput`` for a malformed CPF, ``PersonNotFound``
        (never created, or erased already).
        """
        cpf = load_cpf(cpf)
        erasure = writes.Erase(cpf, self.hasher.hash(cpf), str(erased_by)[:100])
        # No Idempotency-Key: its stored request hash would be a plain hash of the CPF.
        return self.writer.submit(erasure, request_id)

    @rpc(expected_exceptions=CLIENT_ERRORS)
    def add_income(self, cpf, item, idempotency_key=None, request_id=None):
        """Add an income to a person; announces ``income_added``.

        Example::

            >>> n.rpc.person.add_income("52998224725", {"type": "renting", "value": 1000})
            {'id': 1, 'type': 'renting', 'value': '1000.00', 'created_at': '...', 'sequence': 2}

        Raises ``InvalidInput`` (a malformed CPF, invalid fields), ``PersonNotFound`` or
        ``IdempotencyKeyReused`` (the key was used for another request).
        """
        return self._add_item(BY_NAME["income"], cpf, item, idempotency_key, request_id)

    @rpc(expected_exceptions=CLIENT_ERRORS)
    def add_asset(self, cpf, item, idempotency_key=None, request_id=None):
        """Add an asset to a person; announces ``asset_added``.

        Example::

            >>> n.rpc.person.add_asset("52998224725", {"type": "apartment", "value": 100000})
            {'id': 1, 'type': 'apartment', 'value': '100000.00', 'created_at': '...', 'sequence': 3}

        Raises as :meth:`add_income`.
        """
        return self._add_item(BY_NAME["asset"], cpf, item, idempotency_key, request_id)

    @rpc(expected_exceptions=CLIENT_ERRORS)
    def add_debt(self, cpf, item, idempotency_key=None, request_id=None):
        """Add a debt to a person (a debt has no type); announces ``debt_added``.

        Example::

            >>> n.rpc.person.add_debt("52998224725", {"value": 1000})
            {'id': 1, 'value': '1000.00', 'created_at': '...', 'sequence': 4}

        Raises as :meth:`add_income`.
        """
        return self._add_item(BY_NAME["debt"], cpf, item, idempotency_key, request_id)

    def _add_item(self, kind: ItemKind, cpf, item, idempotency_key=None, request_id=None):
        """Add an item of a kind (:mod:`contracts.kinds`): the body of every
        ``add_<kind>`` method. Announces ``<kind>_added``."""
        return self._submit(*self._prepared(kind.rpc_method, (cpf, item)), idempotency_key, request_id)

    def _prepared(self, method, args):
        """What the write ``method(*args)`` submits, its input loaded and
        checked: ``(payload, method, request)``, the request as the client
        sent it (a retry of it hashes the same). Raises ``InvalidInput``."""
        kind = BY_RPC_METHOD.get(method)
        if method not in WRITE_METHODS:
            raise InvalidInput(f"No write method {method!r}.", {"method": [f"Must be one of {WRITE_METHODS}."]})
        if len(args) != (1 if kind is None else 2):
            raise InvalidInput(f"Wrong arguments for {method}.", {"args": [f"{method} takes {WRITE_ARGS[method]}."]})
        if kind is None:
            (person,) = args
            data = load_input(CreatePersonSchema(), person)
            return writes.NewPerson(data, self.hasher.hash(data["cpf"])), method, (person,)
        cpf, item = args
        cpf = load_cpf(cpf)
        data = load_input(ITEM_SCHEMAS[kind.name], item)
        return writes.NewItem(kind, cpf, data), method, (cpf, item)

    def _submit(self, payload, operation, request, idempotency_key, request_id):
        digest = request_hash(operation, *request) if idempotency_key is not None else None
        try:
            return self.writer.submit(payload, request_id, idempotency_key, digest)
        except KeyReused as exc:  # the wire's type (contracts), which the gateway knows
            raise IdempotencyKeyReused(str(exc)) from None

    @rpc
    def health(self):
        """Database reachability and the outbox backlog.

        Example::

            >>> n.rpc.person.health()
            {'service': 'person', 'database': 'ok',
             'outbox': {'pending': 0, 'oldest_pending_age_seconds': 0.0}}
        """
        with self.db.get_session() as session:
            session.execute(text("SELECT 1"))
        return {"service": "person", "database": "ok", "outbox": self.writer.outbox.backlog()}

    @metrics_http("GET", "/metrics")
    def metrics(self, request):
        """Prometheus metrics of this instance, on ``METRICS_ADDRESS["person"]``.

        Example: ``curl localhost:9101/metrics`` -> ``events_published_total{...} 4.0``,
        ``outbox_pending_events 0.0``, ``rpc_requests_total{method="add_income",outcome="ok"} 1.0``...
        """
        read_at_scrape("outbox", self.writer.outbox.backlog, _set_outbox_gauges)
        return metrics_response()

    @sweep_timer()
    def sweep_outbox(self):
        """Sweep: publish whatever the immediate attempt left pending."""
        sent = self.writer.outbox.relay_pending()
        if sent:
            _log.info("outbox sweep published %d events", sent)

    @timer(interval=600)
    @rpc
    def purge_idempotency_keys(self):
        """Forget keys older than ``IDEMPOTENCY_KEY_TTL`` (clients retry within
        it); runs every 10 minutes. Returns how many were deleted.

        Example: ``n.rpc.person.purge_idempotency_keys()`` -> ``3``
        """
        with self.db.get_session() as session:
            purged = self.idempotency.purge_expired(session)
            engine = session.get_bind()
        if purged:
            vacuumed = vacuum_unless_autovacuum(engine, idempotency_keys.name)
            _log.info("purged %d expired idempotency keys", purged, extra={"vacuumed": vacuumed})
        return purged

    @retention_timer()
    @rpc
    def purge_event_history(self):
        """Delete the published events older than ``EVENT_HISTORY_RETENTION``
        from the history, in batches of ``EVENT_HISTORY_CLEANUP_BATCH``, one
        instance at a time (:mod:`reliable_events.retention`); runs every
        ``EVENT_HISTORY_CLEANUP_INTERVAL`` seconds. Returns how many were
        deleted (0 also when another instance is at it).

        Example: ``n.rpc.person.purge_event_history()`` -> ``500``
        """
        return self.writer.outbox.purge_history()
