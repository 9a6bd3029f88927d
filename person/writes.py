"""Person's writes, applied many at once (:mod:`reliable_events.group_commit`).

A batch of writes costs a few statements whatever its size: one INSERT for the
new people, one UPDATE that numbers the events of every person written to
(locking those rows in CPF order, so concurrent batches never deadlock, and
the sequences of one person stay gapless), one INSERT per kind of item, and the
outbox's one INSERT. Statements are built once and given the rows as
parameters (SQLAlchemy's insertmanyvalues): no compiling per request.
"""

from collections import Counter, defaultdict
from dataclasses import dataclass

from sqlalchemy import select, text
from sqlalchemy.dialects.postgresql import insert

from contracts.errors import PersonAlreadyExists, PersonNotFound
from contracts.events import PERSON_CREATED
from contracts.kinds import BY_EVENT_TYPE, KINDS, ItemKind
from person.models import ITEM_MODELS, Person
from person.schemas import PersonOutSchema, item_schemas
from reliable_events.group_commit import Done

_person = Person.__table__
_INSERT_PEOPLE = (
    insert(_person)
    .on_conflict_do_nothing(index_elements=[_person.c.cpf])
    .returning(_person.c.cpf, _person.c.created_at)
)
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
_OUT = {kind.name: item_schemas(kind)[1] for kind in KINDS}
_PERSON_OUT = PersonOutSchema()
_NO_ITEMS = {kind.plural: [] for kind in KINDS}


@dataclass
class NewPerson:
    data: dict  # loaded by CreatePersonSchema


@dataclass
class NewItem:
    kind: ItemKind
    cpf: str
    data: dict  # loaded by the kind's schema


def person_answer(data: dict, created_at) -> dict:
    return {**_PERSON_OUT.dump({**data, "created_at": created_at, **_NO_ITEMS}), "sequence": 1}


def item_answer(kind: ItemKind, data: dict, item_id: int, created_at, sequence: int) -> dict:
    return {**_OUT[kind.name].dump({**data, "id": item_id, "created_at": created_at}), "sequence": sequence}


def apply(session, writes: list) -> list:
    """Write every one of ``writes`` (:class:`NewPerson` or :class:`NewItem`
    payloads); one outcome each: :class:`Done`, or the write's own error."""
    outcomes = [None] * len(writes)
    people = [(i, w.payload) for i, w in enumerate(writes) if isinstance(w.payload, NewPerson)]
    items = [(i, w.payload) for i, w in enumerate(writes) if isinstance(w.payload, NewItem)]
    if people:
        _create_people(session, people, outcomes)
    if items:
        _add_items(session, items, outcomes)
    return outcomes


def _create_people(session, people, outcomes):
    rows = [{**new.data, "last_sequence": 1} for _, new in people]
    created = {row.cpf: row.created_at for row in session.execute(_INSERT_PEOPLE, rows)}
    for i, new in people:
        cpf = new.data["cpf"]
        if cpf not in created:  # there before, or created by an earlier write of this batch
            outcomes[i] = PersonAlreadyExists(f"A person with CPF {cpf} exists.")
            continue
        created_at = created.pop(cpf)
        event = {
            "name": new.data["name"],
            "address": new.data["address"],
            "date_of_birth": new.data["date_of_birth"].isoformat(),
        }
        outcomes[i] = Done(person_answer(new.data, created_at), (PERSON_CREATED, cpf, 1, event))


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
        rows = [{"cpf": new.cpf, **new.data} for _, new, _ in entries]
        inserted = session.execute(_INSERT_ITEMS[kind.name], rows).all()
        for (i, new, sequence), (item_id, created_at) in zip(entries, inserted, strict=True):
            event = {"item_id": item_id, "value": str(new.data["value"])}
            if kind.typed:
                event["type"] = new.data["type"]
            answer = item_answer(kind, new.data, item_id, created_at, sequence)
            outcomes[i] = Done(answer, (kind.event_type, new.cpf, sequence, event))


def answer_again(session, outbox_row) -> dict:
    """The answer a write gave, from its outbox row (for the same request delivered again)."""
    event = outbox_row.payload
    if outbox_row.event_type == PERSON_CREATED:
        person = session.get(Person, outbox_row.aggregate_key)
        data = {"cpf": person.cpf, "name": person.name, "address": person.address}
        return person_answer({**data, "date_of_birth": person.date_of_birth}, person.created_at)
    kind = BY_EVENT_TYPE[outbox_row.event_type]
    table = ITEM_MODELS[kind.name].__table__
    row = session.execute(select(table).where(table.c.id == event["data"]["item_id"])).one()._mapping
    data = {name: row[name] for name in kind.fields}
    return item_answer(kind, data, row["id"], row["created_at"], outbox_row.sequence)
