"""The plain pipeline's tables: person's people and incomes, score's incomes."""

from sqlalchemy import BigInteger, Column, DateTime, ForeignKey, Numeric, String, func
from sqlalchemy.orm import declarative_base

PlainPersonBase = declarative_base(name="PlainPersonBase")
PlainScoreBase = declarative_base(name="PlainScoreBase")


class Person(PlainPersonBase):
    __tablename__ = "person"
    cpf = Column(String(11), primary_key=True)
    name = Column(String(200), nullable=False)
    address = Column(String(500), nullable=False)
    date_of_birth = Column(String(10), nullable=False)


class Income(PlainPersonBase):
    __tablename__ = "income"
    # The INSERT returns the server's defaults too (created_at): no read after it.
    __mapper_args__ = {"eager_defaults": True}
    id = Column(BigInteger, primary_key=True)
    cpf = Column(String(11), ForeignKey("person.cpf"), nullable=False, index=True)
    type = Column(String(50), nullable=False)
    value = Column(Numeric(14, 2), nullable=False)
    created_at = Column(DateTime(timezone=True), nullable=False, server_default=func.clock_timestamp())


class ScoredIncome(PlainScoreBase):
    __tablename__ = "scored_income"
    item_id = Column(BigInteger, primary_key=True)
    cpf = Column(String(11), nullable=False, index=True)
    value = Column(Numeric(14, 2), nullable=False)
    applied_at = Column(DateTime(timezone=True), nullable=False, server_default=func.clock_timestamp())
