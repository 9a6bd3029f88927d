"""A stand-in producer: person's outbox dependency with a write that may roll back."""

from nameko.rpc import rpc
from sqlalchemy import text

from contracts.events import PERSON_EVENTS
from person.models import PersonBase, outbox
from reliable_events.database import Database
from reliable_events.outbox import Outbox, OutboxDependency
from reliable_events.sweep import sweep_timer


class OutboxProbe:
    name = "person"

    db = Database(PersonBase)
    outbox = OutboxDependency(Outbox(PersonBase, outbox, PERSON_EVENTS))

    @rpc
    def write(self, cpf, fail=False):
        with self.db.get_session() as session:
            session.execute(
                text(
                    "INSERT INTO person (cpf, name, address, date_of_birth, event_id, sequence, last_sequence)"
                    " VALUES (:cpf, 'probe', 'probe', '1990-01-01', gen_random_uuid(), 1, 1)"
                ),
                {"cpf": cpf},
            )
            self.outbox.add(session, "person_created", cpf, 1, {"name": "probe"})
            if fail:
                raise RuntimeError("fails after the outbox row was written")

    @rpc
    def sweep(self):
        return self.outbox.relay_pending()

    @sweep_timer()
    def sweep_outbox(self):
        self.outbox.relay_pending()
