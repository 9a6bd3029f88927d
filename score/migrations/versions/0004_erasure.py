"""erasure: each known person's CPF hash, and the erased people's tombstones

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 09:00:00

"""
import hashlib
import hmac
from typing import Sequence, Union

from alembic import context, op
import sqlalchemy as sa

revision: str = '0004'
down_revision: Union[str, Sequence[str], None] = '0003'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.add_column('known_person', sa.Column('cpf_hash', sa.String(length=64), nullable=True))
    # The people known before: hashed as the services hash a CPF (HMAC-SHA256
    # with config.yml's PERSONAL_DATA_HASH_KEY, which ops/migrate.py hands
    # over), written out here so that later code cannot change this past.
    config = context.config.attributes.get("service_config") or {}
    key = str(config.get("PERSONAL_DATA_HASH_KEY") or "").encode()
    conn = op.get_bind()
    cpfs = conn.execute(sa.text("SELECT cpf FROM known_person")).scalars().all()
    if cpfs:
        conn.execute(
            sa.text("UPDATE known_person SET cpf_hash = :cpf_hash WHERE cpf = :cpf"),
            [{"cpf": cpf, "cpf_hash": hmac.new(key, cpf.encode(), hashlib.sha256).hexdigest()} for cpf in cpfs],
        )
    op.alter_column('known_person', 'cpf_hash', nullable=False)
    op.create_index(op.f('ix_known_person_cpf_hash'), 'known_person', ['cpf_hash'], unique=False)
    op.create_table('erased_person',
    sa.Column('cpf_hash', sa.String(length=64), nullable=False),
    sa.Column('sequence', sa.Integer(), nullable=False),
    sa.Column('erased_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('cpf_hash')
    )


def downgrade() -> None:
    op.drop_table('erased_person')
    op.drop_index(op.f('ix_known_person_cpf_hash'), table_name='known_person')
    op.drop_column('known_person', 'cpf_hash')
