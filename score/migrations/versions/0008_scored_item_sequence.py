"""each scored item keeps its event's sequence: an erasure applied late deletes only what came before it

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04 08:30:00

Rows from before have none (NULL): an erasure deletes them as before.
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa

revision: str = '0008'
down_revision: Union[str, Sequence[str], None] = '0007'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.add_column('scored_item', sa.Column('sequence', sa.Integer(), nullable=True))


def downgrade() -> None:
    op.drop_column('scored_item', 'sequence')
