"""Plain person: insert, commit, then dispatch the event (nameko-examples' shape)."""

from marshmallow import Schema, fields
from nameko.events import EventDispatcher
from nameko.rpc import rpc
from nameko_sqlalchemy import DatabaseSession

import reliable_events.green  # noqa: F401  (cooperative psycopg2, as in the system)
from bench.plain.models import Income, Person, PlainPersonBase


class IncomeSchema(Schema):
    type = fields.String(required=True)
    value = fields.Decimal(required=True, places=2, as_string=True)


class PersonSchema(Schema):
    cpf = fields.String(required=True)
    name = fields.String(required=True)
    address = fields.String(required=True)
    date_of_birth = fields.String(required=True)


class PlainPersonService:
    name = "person"

    db = DatabaseSession(PlainPersonBase)
    dispatch = EventDispatcher()

    @rpc
    def create_person(self, person):
        data = PersonSchema().load(person)
        self.db.add(Person(**data))
        self.db.commit()
        return data

    @rpc
    def add_income(self, cpf, income):
        data = IncomeSchema().load(income)
        row = Income(cpf=cpf, **data)
        self.db.add(row)
        self.db.commit()
        answer = {"id": row.id, "cpf": cpf, "type": row.type, "value": str(row.value)}
        self.dispatch("income_added", answer)
        return answer
