"""inbox positions: which aggregate and sequence each applied event was

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 04:00:00

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0002'
down_revision: Union[str, Sequence[str], None] = '0001'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.add_column('processed_events', sa.Column('aggregate_key', sa.String(length=64), nullable=True))
    op.add_column('processed_events', sa.Column('sequence', sa.Integer(), nullable=True))
    op.create_index('ix_processed_events_aggregate', 'processed_events', ['aggregate_key', 'sequence'], unique=False)


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_index('ix_processed_events_aggregate', table_name='processed_events')
    op.drop_column('processed_events', 'sequence')
    op.drop_column('processed_events', 'aggregate_key')
