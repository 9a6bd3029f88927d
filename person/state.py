"""Person's current state, read as the events that built it: the body of
``PersonService.current_state``, which a lost or new replica is rebuilt from
(``score/rebuild.py``) with no history older than the retention
(``EVENT_HISTORY_RETENTION``).

Every row an event announced keeps that event's id and sequence
(:func:`person.models.announced_by`), and its time is the row's
(``created_at``, ``erased_at``): so a person reads as its ``person_created``
and one ``<kind>_added`` per item, and an erasure as its ``person_erased``,
each with the id, sequence and time it was published with. A consumer
applies them as it applied the originals, and its inbox recognises either
as the other.

Pages go through the erasures first (by id), then the people (by CPF), each
person whole with its items: the first page ends where ``limit`` events are
reached (a person with more items than that is a page alone). ``next`` is
where the next page starts; None after the last. Each page is read in one
snapshot (REPEATABLE READ). A person's events are numbered under its row
lock, so the events a page holds of a person are 1 (or the one after its
erasure) to some n with no gap.

**The head, and the tail.** The first page (``after`` None) also reads the
history's settled head (person/history.py) before its state: every event at
or below it is in the state this and every later page reads. A rebuild then
takes the history's tail after that head to catch up with what the pages
could not see (writes to people already read); an event found both ways is
applied once. Later pages answer the highest position committed, for the
caller to know how far the tail has to go.
"""

from sqlalchemy import func, select

from contracts.errors import InvalidInput
from contracts.events import PERSON_CREATED, PERSON_ERASED, PERSON_EVENTS
from contracts.kinds import KINDS
from person.history import head as history_head
from person.history import settled_head
from person.models import ITEM_MODELS, Erasure, Person
from person.writes import item_added_data, person_created_data

STATE_PAGE_MAX = 5000  # events a page holds at most (bar a person with more items alone)
ERASURES, PEOPLE = "erasure", "person"

_erasure = Erasure.__table__
_person = Person.__table__
_ITEMS = [(kind, ITEM_MODELS[kind.name].__table__) for kind in KINDS]
_ITEM_COUNT = sum(
    select(func.count()).where(table.c.cpf == _person.c.cpf).scalar_subquery() for _, table in _ITEMS
).label("item_count")


def parse_cursor(after) -> tuple[str, str]:
    """``(section, key)`` of a page's ``after``: None is the start."""
    if after is None:
        return ERASURES, "0"
    section, _, key = after.partition(":") if isinstance(after, str) else ("", "", "")
    if (section == ERASURES and key.isdigit()) or (
        section == PEOPLE and (key == "" or key.isdigit()) and len(key) <= 11
    ):
        return section, key
    raise InvalidInput("Invalid state page.", {"after": ["Must be None or a page's next."]})


def state_page(session, after, limit) -> dict:
    """The page after ``after`` of person's current state, as
    ``PersonService.current_state`` answers it. Raises ``InvalidInput`` for a
    bad ``after`` or ``limit``, before any query."""
    section, key = parse_cursor(after)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= STATE_PAGE_MAX:
        raise InvalidInput("Invalid state page.", {"limit": [f"Must be an integer between 1 and {STATE_PAGE_MAX}."]})
    head = settled_head(session) if after is None else None
    session.connection(execution_options={"isolation_level": "REPEATABLE READ"})  # the page's one snapshot
    if head is None:
        head = history_head(session)
    events, next_after = [], None
    if section == ERASURES:
        events, next_after = _erasures(session, int(key), limit)
        key = ""
    if next_after is None:
        people, next_after = _people(session, key, limit - len(events), must_take_one=not events)
        events += people
    session.commit()
    return {"events": events, "next": next_after, "head_position": head}


def _erasures(session, after_id: int, limit: int) -> tuple[list, str | None]:
    rows = session.execute(
        select(_erasure.c.id, _erasure.c.cpf_hash, _erasure.c.event_id, _erasure.c.sequence, _erasure.c.erased_at)
        .where(_erasure.c.id > after_id)
        .order_by(_erasure.c.id)
        .limit(limit)
    ).all()
    events = [
        PERSON_EVENTS.new(PERSON_ERASED, row.cpf_hash, row.sequence, {}, str(row.event_id), row.erased_at)
        for row in rows
    ]
    return events, (f"{ERASURES}:{rows[-1].id}" if len(rows) == limit else None)


def _people(session, after_cpf: str, budget: int, must_take_one: bool) -> tuple[list, str | None]:
    candidates = session.execute(
        select(_person, _ITEM_COUNT).where(_person.c.cpf > after_cpf).order_by(_person.c.cpf).limit(max(budget, 1))
    ).all()
    if not candidates:
        return [], None
    taken, used = [], 0
    for row in candidates:
        if (taken or not must_take_one) and used + 1 + row.item_count > budget:
            break
        taken.append(row)
        used += 1 + row.item_count
    if not taken:  # the first person does not fit after this page's erasures: it starts the next
        return [], f"{PEOPLE}:{after_cpf}"
    more = len(taken) < len(candidates) or len(candidates) == max(budget, 1)
    events = [
        PERSON_EVENTS.new(
            PERSON_CREATED, row.cpf, row.sequence, person_created_data(row._mapping), str(row.event_id), row.created_at
        )
        for row in taken
    ]
    cpfs = [row.cpf for row in taken]
    for kind, table in _ITEMS:
        for item in session.execute(select(table).where(table.c.cpf.in_(cpfs)).order_by(table.c.id)):
            data = item_added_data(kind, item.id, item._mapping)
            events.append(
                PERSON_EVENTS.new(kind.event_type, item.cpf, item.sequence, data, str(item.event_id), item.created_at)
            )
    return events, (f"{PEOPLE}:{cpfs[-1]}" if more else None)
