"""Services' workers without a container, on a real database (``worker_factory``)."""

from nameko.testing.services import worker_factory
from sqlalchemy.orm import Session, sessionmaker

from contracts.erasure import CpfHasher
from contracts.events import PERSON_EVENTS
from harness.processes import TEST_HASH_KEY
from person import writes
from person.models import PersonBase, idempotency_keys, outbox
from person.service import PersonService
from reliable_events.group_commit import Transactions, Writer
from reliable_events.outbox import Outbox

# The key both services' workers hash CPFs with here (contracts/erasure.py).
TEST_HASHER = CpfHasher(TEST_HASH_KEY.encode())


class RecordingOutbox(Outbox):
    """Person's ``Outbox`` without a container: the real inserts, nothing
    published; counts the rows it wrote."""

    def __init__(self):
        super().__init__(PersonBase, outbox, PERSON_EVENTS)
        self.writes = 0

    def add_all(self, session, events):
        self.writes += len(events)
        return super().add_all(session, events)

    def committed(self, written):
        pass  # no relay here


def person_writer(engine, recorder=None, session_class=Session) -> Writer:
    """Person's writer through the real ``Transactions``, one write per
    transaction, with ``recorder`` (a :class:`RecordingOutbox`) as its outbox."""
    sessions = sessionmaker(bind=engine, expire_on_commit=False, class_=session_class)
    transactions = Transactions(sessions, recorder or RecordingOutbox(), writes.PersonWrites(), idempotency_keys)
    return Writer(transactions)


def person_worker(engine, db_wrappers, recorder=None, session_class=Session):
    """PersonService's worker, writing through :func:`person_writer`."""
    writer = person_writer(engine, recorder, session_class)
    return worker_factory(PersonService, db=db_wrappers(engine), writer=writer, hasher=TEST_HASHER)
