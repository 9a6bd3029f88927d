"""Person's writes, applied many at once (:mod:`reliable_events.group_commit`).

A batch of writes costs a few statements whatever its size: one round trip
for the new people (their CPFs locked against an erasure, then one INSERT of
them all); one UPDATE that numbers the events of every person written to
(locking those rows in CPF order, so concurrent batches never deadlock, and
the sequences of one person stay gapless), one INSERT per kind of item, and
the outbox's one INSERT. Statements are built once and given the rows as
parameters (as arrays, or as rows by SQLAlchemy's insertmanyvalues): no
compiling per request.

An erasure (:class:`Erase`) runs alone, in a transaction of its own
(:func:`erase`). :class:`PersonWrites` is what the group commit is given.
"""

import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass

from sqlalchemy import select, text
from sqlalchemy.dialects.postgresql import insert

from contracts.erasure import CpfHasher
from contracts.errors import PersonAlreadyExists, PersonNotFound
from contracts.events import PERSON_CREATED, PERSON_ERASED
from contracts.kinds import BY_EVENT_TYPE, KINDS, ItemKind
from person.models import ITEM_MODELS, Erasure, Person, idempotency_keys, outbox
from person.schemas import PersonOutSchema, item_schemas
from reliable_events.group_commit import Done
from reliable_events.outbox import PendingEvent

_person = Person.__table__
_INSERT_ITEMS = {
    kind.name: insert(ITEM_MODELS[kind.name].__table__).returning(
        ITEM_MODELS[kind.name].__table__.c.id,
        ITEM_MODELS[kind.name].__table__.c.created_at,
        sort_by_parameter_order=True,
    )
    for kind in KINDS
}
# Number the next events of many people at once: lock their rows in CPF order
# (two batches that share people then queue, never deadlock), bump each by
# its count of new events; the highest number is returned.
_NUMBER_EVENTS = text(
    """
    WITH wanted AS (SELECT * FROM unnest(CAST(:cpfs AS varchar[]), CAST(:counts AS int[])) AS w(cpf, n)),
         locked AS (SELECT p.cpf FROM person p JOIN wanted w ON w.cpf = p.cpf ORDER BY p.cpf FOR UPDATE OF p)
    UPDATE person p SET last_sequence = p.last_sequence + w.n
    FROM wanted w JOIN locked l ON l.cpf = w.cpf
    WHERE p.cpf = w.cpf
    RETURNING p.cpf, p.last_sequence
    """
)
# New people, in one round trip of two statements. The first takes a shared
# advisory lock per new CPF (an erasure of that CPF takes it exclusively: see
# erase). The second, which PostgreSQL gives a snapshot of its own, so that it
# sees an erasure that committed while the first waited, inserts each person
# numbered after the CPF's last erasure, if any (score then tells the new
# person's events from the erased one's still in flight).
_LOCK_AND_INSERT_PEOPLE = text(
    """
    SELECT pg_advisory_xact_lock_shared(k) FROM unnest(CAST(:keys AS bigint[])) AS k;
    INSERT INTO person (cpf, name, address, date_of_birth, event_id, sequence, last_sequence)
    SELECT n.cpf, n.name, n.address, n.date_of_birth, n.event_id, s.first, s.first
    FROM unnest(CAST(:cpfs AS varchar[]), CAST(:names AS varchar[]), CAST(:addresses AS varchar[]),
                CAST(:births AS date[]), CAST(:hashes AS varchar[]), CAST(:event_ids AS uuid[]))
         AS n(cpf, name, address, date_of_birth, cpf_hash, event_id)
    CROSS JOIN LATERAL (
        SELECT coalesce(max(e.sequence), 0) + 1 AS first FROM erasure e WHERE e.cpf_hash = n.cpf_hash
    ) AS s
    ON CONFLICT (cpf) DO NOTHING
    RETURNING cpf, created_at, last_sequence, event_id
    """
)
_OUT = {kind.name: item_schemas(kind)[1] for kind in KINDS}
_PERSON_OUT = PersonOutSchema()
_NO_ITEMS = {kind.plural: [] for kind in KINDS}


def new_event_id() -> str:
    """An event's id, fixed by the write: kept on the row the event announces
    (:func:`person.models.announced_by`) and in the envelope."""
    return str(uuid.uuid4())


def person_created_data(person) -> dict:
    """A ``person_created`` event's data, from the person's fields (a write's
    input, or its row: ``person/state.py``)."""
    return {
        "name": person["name"],
        "address": person["address"],
        "date_of_birth": person["date_of_birth"].isoformat(),
    }


def item_added_data(kind: ItemKind, item_id: int, item) -> dict:
    """A ``<kind>_added`` event's data, from the item's fields."""
    data = {"item_id": item_id, "value": str(item["value"])}
    if kind.typed:
        data["type"] = item["type"]
    return data


@dataclass
class NewPerson:
    data: dict  # loaded by CreatePersonSchema
    cpf_hash: str  # the CPF's keyed hash (contracts/erasure.py)


@dataclass
class NewItem:
    kind: ItemKind
    cpf: str
    data: dict  # loaded by the kind's schema


@dataclass
class Erase:
    cpf: str
    cpf_hash: str
    erased_by: str


def person_answer(data: dict, created_at, sequence: int) -> dict:
    return {**_PERSON_OUT.dump({**data, "created_at": created_at, **_NO_ITEMS}), "sequence": sequence}


def erasure_answer(sequence: int, erased_at) -> dict:
    """What an erasure answers: no CPF (the caller has it; an answer may be stored)."""
    return {"erased": True, "sequence": sequence, "erased_at": erased_at.isoformat()}


def item_answer(kind: ItemKind, data: dict, item_id: int, created_at, sequence: int) -> dict:
    return {**_OUT[kind.name].dump({**data, "id": item_id, "created_at": created_at}), "sequence": sequence}


class PersonWrites:
    """Person's :class:`~reliable_events.group_commit.Writes`."""

    def apply(self, session, writes: list) -> list:
        """Write every one of ``writes`` (:class:`NewPerson`, :class:`NewItem`,
        or one :class:`Erase` alone); one outcome each: :class:`Done`, or the
        write's own error."""
        if isinstance(writes[0].payload, Erase):
            return [erase(session, writes[0].payload, writes[0].request_id)]
        outcomes = [None] * len(writes)
        people = [(i, w.payload) for i, w in enumerate(writes) if isinstance(w.payload, NewPerson)]
        items = [(i, w.payload) for i, w in enumerate(writes) if isinstance(w.payload, NewItem)]
        if people:
            _create_people(session, people, outcomes)
        if items:
            _add_items(session, items, outcomes)
        return outcomes

    def answer_again(self, session, outbox_row) -> dict:
        """The answer a write gave, from its outbox row (:func:`answer_again`)."""
        return answer_again(session, outbox_row)

    def runs_alone(self, payload) -> bool:
        """An erasure: rare, and it locks what a batch would lock in another order."""
        return isinstance(payload, Erase)


def _create_people(session, people, outcomes):
    keys = sorted({CpfHasher.lock_key(new.cpf_hash) for _, new in people})  # one order for every batch: no deadlock
    columns = {"cpfs": "cpf", "names": "name", "addresses": "address", "births": "date_of_birth"}
    params = {param: [new.data[field] for _, new in people] for param, field in columns.items()}
    params.update(hashes=[new.cpf_hash for _, new in people], keys=keys, event_ids=[new_event_id() for _ in people])
    rows = session.execute(_LOCK_AND_INSERT_PEOPLE, params)
    created = {row.cpf: (row.created_at, row.last_sequence, row.event_id) for row in rows}
    for i, new in people:
        cpf = new.data["cpf"]
        if cpf not in created:  # there before, or created by an earlier write of this batch
            outcomes[i] = PersonAlreadyExists(f"A person with CPF {cpf} exists.")
            continue
        created_at, sequence, event_id = created.pop(cpf)
        event = person_created_data(new.data)
        outcomes[i] = Done(
            person_answer(new.data, created_at, sequence),
            PendingEvent(PERSON_CREATED, cpf, sequence, event, event_id=str(event_id), occurred_at=created_at),
        )


def _add_items(session, items, outcomes):
    counts = Counter(new.cpf for _, new in items)
    cpfs = sorted(counts)
    highest = dict(session.execute(_NUMBER_EVENTS, {"cpfs": cpfs, "counts": [counts[c] for c in cpfs]}).all())
    # Each person's new events are numbered in the order their writes came.
    following = {cpf: highest[cpf] - counts[cpf] for cpf in highest}
    by_kind = defaultdict(list)
    for i, new in items:
        if new.cpf not in following:
            outcomes[i] = PersonNotFound(f"No person with CPF {new.cpf}.")
            continue
        following[new.cpf] += 1
        by_kind[new.kind].append((i, new, following[new.cpf]))
    for kind, entries in by_kind.items():
        rows = [{"cpf": new.cpf, **new.data, "event_id": new_event_id(), "sequence": seq} for _, new, seq in entries]
        inserted = session.execute(_INSERT_ITEMS[kind.name], rows).all()
        for (i, new, sequence), row, (item_id, created_at) in zip(entries, rows, inserted, strict=True):
            event = item_added_data(kind, item_id, new.data)
            answer = item_answer(kind, new.data, item_id, created_at, sequence)
            announced = PendingEvent(
                kind.event_type, new.cpf, sequence, event, event_id=row["event_id"], occurred_at=created_at
            )
            outcomes[i] = Done(answer, announced)


_LOCK_PERSON = text("SELECT pg_advisory_xact_lock(:key)")
_ITEM_TABLES = [ITEM_MODELS[kind.name].__table__ for kind in KINDS]


def erase(session, erasure: Erase, request_id=None):
    """Erase a person: its row, its items, its event history (published or
    not), the answers stored for its writes; record the erasure
    (:class:`~person.models.Erasure`) and announce ``person_erased``, keyed by
    the CPF's hash, numbered after the person's last event. Its outcome.

    Ordered against the person's other writes: items lock the person's row,
    as this does first; a creation of the same CPF takes the CPF's advisory
    lock shared, this takes it exclusively (see ``_LOCK_AND_INSERT_PEOPLE``).
    """
    cpf = erasure.cpf
    session.execute(_LOCK_PERSON, {"key": CpfHasher.lock_key(erasure.cpf_hash)})
    last = session.execute(
        select(_person.c.last_sequence).where(_person.c.cpf == cpf).with_for_update()
    ).scalar_one_or_none()
    if last is None:
        if request_id is not None:  # this very request, delivered again after it erased the person?
            row = session.execute(select(outbox).where(outbox.c.request_id == request_id)).one_or_none()
            if row is not None:
                return Done(answer_again(session, row))
        return PersonNotFound(f"No person with CPF {cpf}.")
    for table in _ITEM_TABLES:
        session.execute(table.delete().where(table.c.cpf == cpf))
    session.execute(_person.delete().where(_person.c.cpf == cpf))
    # The relay may still publish a deleted row it holds in memory: score
    # drops it, being numbered before the erasure (score/replica.py).
    session.execute(outbox.delete().where(outbox.c.aggregate_key == cpf))
    session.execute(idempotency_keys.delete().where(idempotency_keys.c.aggregate_key == cpf))
    sequence, event_id = last + 1, new_event_id()
    erased_at = session.execute(
        Erasure.__table__.insert()
        .values(cpf_hash=erasure.cpf_hash, event_id=event_id, sequence=sequence, erased_by=erasure.erased_by)
        .returning(Erasure.erased_at)
    ).scalar_one()
    announced = PendingEvent(PERSON_ERASED, erasure.cpf_hash, sequence, {}, event_id=event_id, occurred_at=erased_at)
    return Done(erasure_answer(sequence, erased_at), announced)


def answer_again(session, outbox_row) -> dict:
    """The answer a write gave, from its outbox row (for the same request delivered again)."""
    event = outbox_row.payload
    if outbox_row.event_type == PERSON_ERASED:
        erased_at = session.execute(
            select(Erasure.erased_at).where(
                Erasure.cpf_hash == outbox_row.aggregate_key, Erasure.sequence == outbox_row.sequence
            )
        ).scalar_one()
        return erasure_answer(outbox_row.sequence, erased_at)
    if outbox_row.event_type == PERSON_CREATED:
        person = session.get(Person, outbox_row.aggregate_key)
        data = {"cpf": person.cpf, "name": person.name, "address": person.address}
        return person_answer({**data, "date_of_birth": person.date_of_birth}, person.created_at, outbox_row.sequence)
    kind = BY_EVENT_TYPE[outbox_row.event_type]
    table = ITEM_MODELS[kind.name].__table__
    row = session.execute(select(table).where(table.c.id == event["data"]["item_id"])).one()._mapping
    data = {name: row[name] for name in kind.fields}
    return item_answer(kind, data, row["id"], row["created_at"], outbox_row.sequence)
