"""waiting reads: score announces a person's advance only while a read waits

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04 03:30:00

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa

revision: str = '0006'
down_revision: Union[str, Sequence[str], None] = '0005'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table('waiting_read',
    sa.Column('cpf_hash', sa.String(length=64), nullable=False),
    sa.Column('until', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('cpf_hash'),
    prefixes=['UNLOGGED'],
    )


def downgrade() -> None:
    op.drop_table('waiting_read')
