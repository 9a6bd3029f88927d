"""inbox as watermarks: processed_events folded into known_person

Each known person gets its watermark (reliable_events/inbox.py) from the
sequences the inbox holds for it: ``applied_through``, the highest with none
missing after its erasure's sequence (0 if none), and ``applied_above``, those
above a gap. The event-id rows are then dropped. Rows written before 0002 carry
no sequence and cannot be folded: a person's events from before then count as
applied only up to what the sequenced rows show.

A downgrade brings back an empty ``processed_events``: a watermark holds no
event ids, so events delivered again after it would be applied again (drain
score's queues first).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04 03:00:00

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision: str = '0005'
down_revision: Union[str, Sequence[str], None] = '0004'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

_FOLD = """
WITH base AS (
    SELECT k.cpf, coalesce(e.sequence, 0) AS after
    FROM known_person k LEFT JOIN erased_person e ON e.cpf_hash = k.cpf_hash
),
applied AS (
    SELECT DISTINCT b.cpf, b.after, p.sequence
    FROM base b JOIN processed_events p ON p.aggregate_key = b.cpf AND p.sequence > b.after
),
ranked AS (
    SELECT cpf, after, sequence, row_number() OVER (PARTITION BY cpf ORDER BY sequence) AS rank FROM applied
),
marks AS (
    SELECT b.cpf,
           coalesce(max(r.sequence) FILTER (WHERE r.sequence = r.rank + b.after), b.after) AS through
    FROM base b LEFT JOIN ranked r ON r.cpf = b.cpf
    GROUP BY b.cpf, b.after
)
UPDATE known_person k
SET applied_through = m.through,
    applied_above = coalesce(
        (SELECT array_agg(a.sequence ORDER BY a.sequence) FROM applied a WHERE a.cpf = k.cpf AND a.sequence > m.through),
        '{}'
    )
FROM marks m
WHERE m.cpf = k.cpf
"""


def upgrade() -> None:
    op.add_column('known_person', sa.Column('applied_through', sa.Integer(), nullable=True))
    op.add_column('known_person', sa.Column('applied_above', postgresql.ARRAY(sa.Integer()), server_default=sa.text("'{}'"), nullable=False))
    op.execute(_FOLD)
    op.alter_column('known_person', 'applied_through', nullable=False)
    op.drop_index('ix_processed_events_aggregate', table_name='processed_events')
    op.drop_table('processed_events')


def downgrade() -> None:
    op.create_table('processed_events',
    sa.Column('consumer', sa.String(length=128), nullable=False),
    sa.Column('event_id', sa.UUID(as_uuid=False), nullable=False),
    sa.Column('event_type', sa.String(length=64), nullable=False),
    sa.Column('aggregate_key', sa.String(length=64), nullable=True),
    sa.Column('sequence', sa.Integer(), nullable=True),
    sa.Column('processed_at', sa.DateTime(timezone=True), server_default=sa.text('clock_timestamp()'), nullable=False),
    sa.PrimaryKeyConstraint('consumer', 'event_id')
    )
    op.create_index('ix_processed_events_aggregate', 'processed_events', ['aggregate_key', 'sequence'], unique=False)
    op.drop_column('known_person', 'applied_above')
    op.drop_column('known_person', 'applied_through')
