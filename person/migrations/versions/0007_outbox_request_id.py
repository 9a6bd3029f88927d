"""the outbox's request_key is request_id: one name for the request's id, from the gateway to the column

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 21:50:00

"""
from typing import Sequence, Union

from alembic import op

revision: str = '0007'
down_revision: Union[str, Sequence[str], None] = '0006'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.alter_column('outbox', 'request_key', new_column_name='request_id')
    op.execute('ALTER INDEX ux_outbox_request_key RENAME TO ux_outbox_request_id')


def downgrade() -> None:
    op.execute('ALTER INDEX ux_outbox_request_id RENAME TO ux_outbox_request_key')
    op.alter_column('outbox', 'request_id', new_column_name='request_key')
