"""erasure events name their person under cpf_hash, not cpf (it holds a hash)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 22:00:00

"""
from typing import Sequence, Union

from alembic import op

revision: str = '0006'
down_revision: Union[str, Sequence[str], None] = '0005'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    # The history's erasures, as a rebuild reads them. (Score also reads an
    # erasure published before this under "cpf": contracts/envelope.py.)
    op.execute(
        "UPDATE outbox SET payload = (payload - 'cpf') || jsonb_build_object('cpf_hash', payload -> 'cpf')"
        " WHERE event_type = 'person_erased' AND payload ? 'cpf'"
    )


def downgrade() -> None:
    op.execute(
        "UPDATE outbox SET payload = (payload - 'cpf_hash') || jsonb_build_object('cpf', payload -> 'cpf_hash')"
        " WHERE event_type = 'person_erased' AND payload ? 'cpf_hash'"
    )
