"""outbox request key: the writing request's id, unique (a redelivered request writes nothing)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30 23:40:00

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa

revision: str = '0004'
down_revision: Union[str, Sequence[str], None] = '0003'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.add_column('outbox', sa.Column('request_key', sa.String(length=200), nullable=True))
    op.create_index(
        'ux_outbox_request_key', 'outbox', ['request_key'], unique=True,
        postgresql_where=sa.text('request_key IS NOT NULL'),
    )


def downgrade() -> None:
    op.drop_index('ux_outbox_request_key', table_name='outbox')
    op.drop_column('outbox', 'request_key')
