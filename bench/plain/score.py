"""Plain score: an ``@event_handler`` that inserts what it receives."""

from nameko.events import event_handler
from nameko_sqlalchemy import DatabaseSession

import reliable_events.green  # noqa: F401  (cooperative psycopg2, as in the system)
from bench.plain.models import PlainScoreBase, ScoredIncome


class PlainScoreService:
    name = "score"

    db = DatabaseSession(PlainScoreBase)

    @event_handler("person", "income_added")
    def on_income_added(self, event):
        self.db.add(ScoredIncome(item_id=event["id"], cpf=event["cpf"], value=event["value"]))
        self.db.commit()
