"""erasure: the erasures' audit, and indexes to find all of one person's rows

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 09:00:00

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa

revision: str = '0005'
down_revision: Union[str, Sequence[str], None] = '0004'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table('erasure',
    sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
    sa.Column('cpf_hash', sa.String(length=64), nullable=False),
    sa.Column('sequence', sa.Integer(), nullable=False),
    sa.Column('erased_by', sa.String(length=100), nullable=False),
    sa.Column('erased_at', sa.DateTime(timezone=True), server_default=sa.text('clock_timestamp()'), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_erasure_cpf_hash'), 'erasure', ['cpf_hash'], unique=False)
    # The stored answers of writes made before this column existed name no
    # person: they cannot be found by an erasure, and expire within
    # IDEMPOTENCY_KEY_TTL.
    op.add_column('idempotency_keys', sa.Column('aggregate_key', sa.String(length=64), nullable=True))
    op.create_index(op.f('ix_idempotency_keys_aggregate_key'), 'idempotency_keys', ['aggregate_key'], unique=False)
    op.create_index('ix_outbox_aggregate', 'outbox', ['aggregate_key'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_outbox_aggregate', table_name='outbox')
    op.drop_index(op.f('ix_idempotency_keys_aggregate_key'), table_name='idempotency_keys')
    op.drop_column('idempotency_keys', 'aggregate_key')
    op.drop_index(op.f('ix_erasure_cpf_hash'), table_name='erasure')
    op.drop_table('erasure')
