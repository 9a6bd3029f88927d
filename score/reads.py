"""Reading a score from score's replica, and a read that waits for a write.

**Waiting reads.** A read that wants a write the replica has not applied yet
registers in ``waiting_read`` (:func:`wait_for`), and score announces a
person's advance (``replica_advanced``, score/notices.py) only while a read
waits for it (score/replica.py reads the registrations with the batch's
locks): no broker message per event otherwise. The registration takes the
person's lock too, so a batch either committed before it (the read after it
sees the batch) or finds it (and announces).
"""

from collections import Counter

from sqlalchemy import func, select, text

from contracts.erasure import CpfHasher
from contracts.errors import ScoreNotFound
from contracts.scores import APPLIED_SEQUENCE, score_answer
from score import rules
from score.models import ErasedPerson, KnownPerson, ScoredItem

# A read's registration: the person's lock (as a batch takes it), then the
# row, kept until the later of the two bounds. Expired rows go meanwhile,
# those no other registration holds (one that waited for another's could
# deadlock with it).
_WAIT_FOR = text(
    """
    SELECT pg_advisory_xact_lock(:lock);
    DELETE FROM waiting_read WHERE cpf_hash IN (
        SELECT cpf_hash FROM waiting_read WHERE until < clock_timestamp() FOR UPDATE SKIP LOCKED
    );
    INSERT INTO waiting_read (cpf_hash, until)
    VALUES (:cpf_hash, clock_timestamp() + make_interval(secs => :seconds))
    ON CONFLICT (cpf_hash) DO UPDATE SET until = greatest(waiting_read.until, excluded.until)
    """
)


def score_or_wait(db, cpf: str, cpf_hash: str, person_known: bool, min_sequence, wait_seconds: float):
    """The score of ``cpf`` (see :func:`read_score`), or the ``ScoreNotFound``
    to raise. Short of ``min_sequence`` (if given), the read registers a wait
    of ``wait_seconds`` (:func:`wait_for`) and reads again."""
    result = _read(db, cpf, cpf_hash, person_known)
    if min_sequence is not None and _applied(result) < min_sequence:
        with db.get_session() as session:
            wait_for(session, cpf_hash, wait_seconds)
        result = _read(db, cpf, cpf_hash, person_known)
    return result


def _read(db, cpf, cpf_hash, person_known):
    with db.get_session() as session:
        result = read_score(session, cpf, cpf_hash, known=person_known)
        if result is None:
            return ScoreNotFound(f"No score for CPF {cpf}.", erased_through(session, cpf_hash))
    return result


def _applied(result) -> int:
    """How far a read found the person applied (a score, or its ScoreNotFound)."""
    return result.applied_sequence if isinstance(result, ScoreNotFound) else result[APPLIED_SEQUENCE]


def wait_for(session, cpf_hash: str, seconds: float) -> None:
    """Register a read waiting for the person's next events for ``seconds``:
    the batches that apply them announce it. Commit before reading again."""
    session.execute(_WAIT_FOR, {"lock": CpfHasher.lock_key(cpf_hash), "cpf_hash": cpf_hash, "seconds": seconds})


def erased_through(session, cpf_hash: str) -> int:
    """The sequence of the person's last erasure applied here; 0 if none."""
    tombstone = select(ErasedPerson.sequence).where(ErasedPerson.cpf_hash == cpf_hash).scalar_subquery()
    return session.execute(select(func.coalesce(tombstone, 0))).scalar_one()


def read_score(session, cpf: str, cpf_hash: str, known: bool = False):
    """The score answer of ``cpf`` (:func:`contracts.scores.score_answer`), or
    None if the CPF is unknown here, unless ``known`` (the caller knows person
    has it): then the empty score.

    ``applied_sequence`` is the gapless prefix of the person's events applied
    (its watermark's ``through``; ``last_sequence``, the highest applied, can
    run ahead of a gap): a reader who wrote sequence ``n`` sees that write
    once ``applied_sequence >= n``. For a person created again after an
    erasure the prefix starts after the erasure's sequence.

    One statement, so one snapshot: the sequences and the items are from the
    same moment even while batches commit in between (two reads could pair a
    fresh item list with an older sequence).
    """
    rows = session.execute(
        select(
            KnownPerson.last_sequence,
            KnownPerson.updated_at,
            ScoredItem.kind,
            ScoredItem.value,
            KnownPerson.applied_through.label("applied_sequence"),
        )
        .outerjoin(ScoredItem, ScoredItem.cpf == KnownPerson.cpf)
        .where(KnownPerson.cpf == cpf)
    ).all()
    if not rows:
        return score_answer(cpf, {}, {}, 0, erased_through(session, cpf_hash), None) if known else None
    items = [(row.kind, row.value) for row in rows if row.kind is not None]
    counts = Counter(kind for kind, _ in items)
    return score_answer(
        cpf,
        rules.score_items(items)["breakdown"],
        counts,
        rows[0].last_sequence,
        rows[0].applied_sequence,
        rows[0].updated_at,
    )
