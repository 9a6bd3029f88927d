"""history retention: the highest outbox position the retention policy deleted

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04 09:00:00

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa

revision: str = '0008'
down_revision: Union[str, Sequence[str], None] = '0007'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    # One row per history (``source``: the outbox table's name): every
    # published event up to ``deleted_through`` may have been deleted.
    op.create_table('history_retention',
    sa.Column('source', sa.String(length=64), nullable=False),
    sa.Column('deleted_through', sa.BigInteger(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('clock_timestamp()'), nullable=False),
    sa.PrimaryKeyConstraint('source')
    )


def downgrade() -> None:
    op.drop_table('history_retention')
