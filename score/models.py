"""Score's replica: only what scoring needs, per CPF, built from person's events."""

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Integer,
    Numeric,
    PrimaryKeyConstraint,
    String,
    func,
)
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.orm import declarative_base

from reliable_events.tables import watermark_columns

ScoreBase = declarative_base(name="ScoreBase")


class KnownPerson(ScoreBase):
    """A CPF score has heard of (it scores 0 until items arrive), and how far its events are applied."""

    __tablename__ = "known_person"

    cpf = Column(String(11), primary_key=True)
    # The CPF's keyed hash (contracts/erasure.py): how a person_erased event,
    # which never carries the CPF, finds the person's rows.
    cpf_hash = Column(String(64), nullable=False, index=True)
    # Score's inbox (reliable_events/inbox.py): the person's sequences
    # applied, all up to applied_through and those in applied_above; a
    # duplicate is recognised by them for ever, in this one row per person.
    applied_through, applied_above = watermark_columns()
    # The highest sequence applied: events may arrive out of order (a queue
    # per event type), and scoring is a sum, so order never matters for the
    # result; applied_through, not this, says what a reader has seen.
    last_sequence = Column(Integer, nullable=False)
    first_seen_at = Column(DateTime(timezone=True), nullable=False, server_default=func.now())
    updated_at = Column(DateTime(timezone=True), nullable=False, server_default=func.now())


class ScoredItem(ScoreBase):
    """One income, asset or debt: its value, and when it happened and was applied."""

    __tablename__ = "scored_item"

    kind = Column(String(10), nullable=False)
    item_id = Column(BigInteger, nullable=False)
    cpf = Column(String(11), nullable=False, index=True)
    value = Column(Numeric(14, 2), nullable=False)
    event_id = Column(UUID(as_uuid=False), nullable=False, unique=True)
    # The event's sequence in the person's history: an erasure applied after
    # a person created again had items scored keeps theirs (score/replica.py).
    # NULL on rows from before it was kept.
    sequence = Column(Integer)
    occurred_at = Column(DateTime(timezone=True), nullable=False)
    applied_at = Column(DateTime(timezone=True), nullable=False, server_default=func.clock_timestamp())

    __table_args__ = (PrimaryKeyConstraint("kind", "item_id"),)


class ErasedPerson(ScoreBase):
    """A person erased, by the CPF's keyed hash: the replica drops that
    person's events numbered up to ``sequence`` (still in flight, retried, or
    replayed from the history), and counts a person created again with the CPF
    from after it."""

    __tablename__ = "erased_person"

    cpf_hash = Column(String(64), primary_key=True)
    sequence = Column(Integer, nullable=False)
    erased_at = Column(DateTime(timezone=True), nullable=False, server_default=func.now())


class WaitingRead(ScoreBase):
    """A read waiting to see a person's next events (read-your-writes,
    gateway/freshness.py) until ``until``: score tells the gateways that a
    person's replica advanced only while a read waits for it. By the CPF's
    keyed hash, never the CPF: a read may name a CPF nobody holds, or one
    erased meanwhile. Unlogged: a wake-up, which a crash may lose as it may
    lose a notice."""

    __tablename__ = "waiting_read"
    __table_args__ = {"prefixes": ["UNLOGGED"]}

    cpf_hash = Column(String(64), primary_key=True)
    until = Column(DateTime(timezone=True), nullable=False)


class ReplicaCheckpoint(ScoreBase):
    """How far a rebuild from a source has got (score/rebuild.py).

    While it reads the source's current state, ``state_after`` is where its
    next page starts, and ``position`` the history's head as of the first
    page, after which the history's tail is read next. Then ``state_after`` is
    NULL and ``position`` the history position up to which every event was
    applied by a rebuild (or found applied already). A rebuild started
    without a position resumes from here. Live events never move it.
    """

    __tablename__ = "replica_checkpoint"

    source = Column(String(64), primary_key=True)
    position = Column(BigInteger, nullable=False)
    state_after = Column(String(64))
    updated_at = Column(DateTime(timezone=True), nullable=False, server_default=func.now())
