"""a rebuild reads person's current state, then its history's tail: where it has got in the state

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04 09:40:00

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa

revision: str = '0007'
down_revision: Union[str, Sequence[str], None] = '0006'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.add_column('replica_checkpoint', sa.Column('state_after', sa.String(length=64), nullable=True))


def downgrade() -> None:
    op.drop_column('replica_checkpoint', 'state_after')
