"""Services' workers without a container, on a real database (``worker_factory``)."""

from nameko.testing.services import worker_factory
from sqlalchemy.orm import sessionmaker

from contracts.erasure import CpfHasher
from contracts.events import PERSON_EVENTS
from harness.processes import TEST_HASH_KEY
from person import writes
from person.models import PersonBase, idempotency_keys, outbox
from person.service import PersonService
from reliable_events.group_commit import Submitter, Transactions
from reliable_events.outbox import Outbox

# The key both services' workers hash CPFs with here (contracts/erasure.py).
TEST_HASHER = CpfHasher(TEST_HASH_KEY.encode())


class RecordingOutbox(Outbox):
    """Person's ``Outbox`` provider without a container: the real inserts, nothing
    published; counts the rows it wrote."""

    def __init__(self):
        super().__init__(PersonBase, outbox, PERSON_EVENTS)
        self.writes = 0

    def wrote(self, session, worker_ctx, envelope, headers):
        self.writes += 1


def person_worker(engine, db_wrappers, recorder=None):
    """PersonService's worker, writing through the real ``Transactions`` (one
    write per transaction) and ``recorder`` (a :class:`RecordingOutbox`)."""
    transactions = Transactions(
        sessionmaker(bind=engine, expire_on_commit=False),
        recorder or RecordingOutbox(),
        writes.apply,
        writes.answer_again,
        idempotency_keys,
    )
    return worker_factory(
        PersonService, db=db_wrappers(engine), committer=Submitter(transactions, None), hasher=TEST_HASHER
    )
