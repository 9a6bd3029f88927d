"""The person service's tables: people, their items, and the event outbox."""

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
from sqlalchemy.orm import declarative_base, relationship

from reliable_events.idempotency import idempotency_table
from reliable_events.tables import outbox_table

PersonBase = declarative_base(name="PersonBase")

# Money columns: exact decimals, 2 places, bounds checked by the schema and here.
MONEY = Numeric(14, 2)


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

    incomes = relationship("Income", order_by="Income.id", lazy="selectin")
    assets = relationship("Asset", order_by="Asset.id", lazy="selectin")
    debts = relationship("Debt", order_by="Debt.id", lazy="selectin")

    __table_args__ = (CheckConstraint("cpf ~ '^[0-9]{11}$'", name="ck_person_cpf_digits"),)


class _Item:
    id = Column(BigInteger, primary_key=True, autoincrement=True)
    value = Column(MONEY, nullable=False)
    created_at = Column(DateTime(timezone=True), nullable=False, server_default=func.now())


class Income(_Item, PersonBase):
    __tablename__ = "income"
    cpf = Column(String(11), ForeignKey("person.cpf"), nullable=False, index=True)
    type = Column(String(50), nullable=False)
    __table_args__ = (CheckConstraint("value > 0", name="ck_income_value_positive"),)


class Asset(_Item, PersonBase):
    __tablename__ = "asset"
    cpf = Column(String(11), ForeignKey("person.cpf"), nullable=False, index=True)
    type = Column(String(50), nullable=False)
    __table_args__ = (CheckConstraint("value > 0", name="ck_asset_value_positive"),)


class Debt(_Item, PersonBase):
    __tablename__ = "debt"
    cpf = Column(String(11), ForeignKey("person.cpf"), nullable=False, index=True)
    __table_args__ = (CheckConstraint("value > 0", name="ck_debt_value_positive"),)


outbox = outbox_table(PersonBase.metadata)
idempotency_keys = idempotency_table(PersonBase.metadata)
