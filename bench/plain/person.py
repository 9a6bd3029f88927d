"""Plain person, as lean as a careful engineer writes it without an outbox:
validate (the system's own schemas), insert and take the id and time from the
INSERT's RETURNING, commit, then dispatch the event. No read after the commit."""

from nameko.events import EventDispatcher
from nameko.rpc import rpc
from nameko_sqlalchemy import DatabaseSession

import reliable_events.green  # noqa: F401  (cooperative psycopg2, as in the system)
from bench.plain.models import Income, Person, PlainPersonBase
from contracts.kinds import BY_NAME
from person.schemas import ITEM_SCHEMAS, CreatePersonSchema, load_cpf, load_input

INCOME_SCHEMA = ITEM_SCHEMAS[BY_NAME["income"].name]


class PlainPersonService:
    name = "person"

    db = DatabaseSession(PlainPersonBase)
    dispatch = EventDispatcher()

    @rpc
    def create_person(self, person):
        data = load_input(CreatePersonSchema(), person)
        data["date_of_birth"] = data["date_of_birth"].isoformat()
        self.db.add(Person(**data))
        self.db.commit()
        return data

    @rpc
    def add_income(self, cpf, income):
        cpf = load_cpf(cpf)
        data = load_input(INCOME_SCHEMA, income)
        row = Income(cpf=cpf, **data)
        self.db.add(row)
        self.db.flush()  # INSERT ... RETURNING id, created_at (eager defaults): no SELECT after
        answer = {
            "id": row.id,
            "cpf": cpf,
            "type": row.type,
            "value": str(row.value),
            "created_at": row.created_at.isoformat(),
        }
        self.db.commit()
        self.dispatch("income_added", answer)
        return answer
