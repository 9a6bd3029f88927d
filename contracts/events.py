"""Person's events and score's notices: who sends them, their names, their key.

Events go out on ``person.events`` as Nameko events; score's handler of
``<type>`` listens on ``evt-person-<type>--score.on_<type>``. The envelope's
aggregate is the person, under ``cpf``.
"""

from contracts.cpf import CPF_LENGTH
from contracts.kinds import KINDS
from reliable_events.envelope import EventSource

PERSON_EVENTS = EventSource(service="person", key_field="cpf", key_pattern=rf"\A[0-9]{{{CPF_LENGTH}}}\Z")

PERSON_CREATED = "person_created"
EVENT_TYPES: tuple[str, ...] = (PERSON_CREATED, *(kind.event_type for kind in KINDS))

# Score's wake-up notices for waiting reads (not data: neither persistent nor
# confirmed), on ``score.events``: {"cpfs": [...]} after each commit.
SCORE_NOTICES = "score"
REPLICA_ADVANCED = "replica_advanced"
