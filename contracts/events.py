"""Person's events and score's notices: who sends them, their names, their key.

Events go out on ``person.events`` as Nameko events; score's handler of
``<type>`` listens on ``evt-person-<type>--score.on_<type>``. The envelope's
aggregate is the person, under ``cpf``; ``person_erased`` names it by its
keyed hash, under ``cpf_hash``.
"""

from contracts.cpf import CPF_LENGTH
from contracts.envelope import EventSource
from contracts.erasure import CPF_HASH_PATTERN
from contracts.kinds import KINDS

PERSON_CREATED = "person_created"
# An erasure names its person by the CPF's keyed hash (contracts/erasure.py),
# never by the CPF: it stays in person's event history for good.
PERSON_ERASED = "person_erased"
EVENT_TYPES: tuple[str, ...] = (PERSON_CREATED, *(kind.event_type for kind in KINDS), PERSON_ERASED)

PERSON_EVENTS = EventSource(
    service="person",
    key_field="cpf",
    key_pattern=rf"\A[0-9]{{{CPF_LENGTH}}}\Z",
    key_fields=((PERSON_ERASED, "cpf_hash"),),
    key_patterns=((PERSON_ERASED, rf"\A{CPF_HASH_PATTERN}\Z"),),
)

# Score's wake-up notices for waiting reads (not data: neither persistent nor
# confirmed), on ``score.events``: {"cpfs": [...]} after a commit that moved
# people a read waits for (score/replica.py, "Waiting reads"). Each
# gateway hears them on a queue of its own, named this and then a new id per
# connection (the broker's permissions name these queues by it: ops/permissions.py).
SCORE_NOTICES = "score"
REPLICA_ADVANCED = "replica_advanced"
NOTICE_QUEUE_PREFIX = "gateway-replica-advanced-"
