"""The person service's tables: people, a table per kind of item (from
:mod:`contracts.kinds`), the event outbox, the idempotency keys and the
erasures' audit."""

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    Date,
    DateTime,
    ForeignKey,
    Integer,
    Numeric,
    String,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.orm import declarative_base, relationship

from contracts.idempotency import IDEMPOTENCY_KEY_MAX_LENGTH
from contracts.kinds import KINDS, ItemKind
from reliable_events.idempotency import idempotency_table
from reliable_events.tables import history_retention_table, outbox_table

PersonBase = declarative_base(name="PersonBase")

# Money columns: exact decimals, 2 places, bounds checked by the schema and here.
MONEY = Numeric(14, 2)


def announced_by() -> list[Column]:
    """The event that announced a row: its id and its sequence in the
    person's history. Kept on the row, so the current state reads as the very
    events that built it (``person/state.py``): a replica is rebuilt from them
    without the history they came from."""
    return [Column("event_id", UUID(as_uuid=False), nullable=False), Column("sequence", Integer, nullable=False)]


class Person(PersonBase):
    __tablename__ = "person"

    # The 11-digit string: a CPF is an identifier, not a number (leading zeros).
    cpf = Column(String(11), primary_key=True)
    name = Column(String(200), nullable=False)
    address = Column(String(500), nullable=False)
    date_of_birth = Column(Date, nullable=False)
    created_at = Column(DateTime(timezone=True), nullable=False, server_default=func.now())
    # Sequence of the last event announced for this person; bumping it locks the
    # row, which serialises concurrent writes for one person and keeps it gapless.
    last_sequence = Column(Integer, nullable=False, server_default=text("0"))
    # The person_created event's (its sequence: 1, or after the CPF's last erasure).
    event_id, sequence = announced_by()

    __table_args__ = (CheckConstraint("cpf ~ '^[0-9]{11}$'", name="ck_person_cpf_digits"),)


def _item_model(kind: ItemKind):
    """The table of one kind of item (``income``: id, cpf, type, value, created_at)."""
    columns = {
        "__tablename__": kind.name,
        "id": Column(BigInteger, primary_key=True, autoincrement=True),
        "cpf": Column(String(11), ForeignKey("person.cpf"), nullable=False, index=True),
        "value": Column(MONEY, nullable=False),
        "created_at": Column(DateTime(timezone=True), nullable=False, server_default=func.now()),
        **dict(zip(("event_id", "sequence"), announced_by(), strict=True)),
        "__table_args__": (CheckConstraint("value > 0", name=f"ck_{kind.name}_value_positive"),),
    }
    if kind.typed:
        columns["type"] = Column(String(50), nullable=False)
    return type(kind.name.title(), (PersonBase,), columns)


# kind name -> its model; a person's items of each kind are ``person.<plural>``.
ITEM_MODELS = {kind.name: _item_model(kind) for kind in KINDS}
for _kind in KINDS:
    _model = ITEM_MODELS[_kind.name]
    setattr(Person, _kind.plural, relationship(_model, order_by=_model.id, lazy="selectin"))


class Erasure(PersonBase):
    """One erasure of a person (LGPD): the only record left of that person.

    ``cpf_hash``: the CPF's keyed hash (contracts/erasure.py), never the CPF.
    ``sequence``: the ``person_erased`` event's; a person created again with
    that CPF goes on from it, so that score can tell its new events from the
    erased person's still in flight. ``erased_by``: who asked, by name (a
    token's hash, see gateway/auth.py), never by secret.
    """

    __tablename__ = "erasure"

    id = Column(BigInteger, primary_key=True, autoincrement=True)
    cpf_hash = Column(String(64), nullable=False, index=True)
    event_id, sequence = announced_by()
    erased_by = Column(String(100), nullable=False)
    erased_at = Column(DateTime(timezone=True), nullable=False, server_default=func.clock_timestamp())


outbox = outbox_table(PersonBase.metadata)
idempotency_keys = idempotency_table(PersonBase.metadata, IDEMPOTENCY_KEY_MAX_LENGTH)
# How far the retention policy deleted the outbox's history (reliable_events/retention.py).
history_retention = history_retention_table(PersonBase.metadata)
