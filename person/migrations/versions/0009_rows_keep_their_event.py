"""every row an event announced keeps that event's id and sequence

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04 09:30:00

A person, an item and an erasure keep the id and the sequence of the event
that announced them (person/models.py ``announced_by``): person's current
state then reads as the very events that built it (person/state.py), and a
replica is rebuilt from it with no history older than the retention.

Rows written before this revision take them from their event in the outbox,
which until now was kept for ever: a person's ``person_created`` (an erasure
deletes the person's outbox rows with its rows, so the one left is the
current person's), an item's ``<kind>_added`` by its ``item_id``, an
erasure's ``person_erased`` by hash and sequence. A row with no event there
cannot be rebuilt from; the upgrade then stops and names how many.
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision: str = '0009'
down_revision: Union[str, Sequence[str], None] = '0008'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

# The kinds of item as they were at this revision (a migration does not follow
# contracts/kinds.py later).
ITEMS = ('income', 'asset', 'debt')


def upgrade() -> None:
    for table in ('person', *ITEMS):
        op.add_column(table, sa.Column('event_id', postgresql.UUID(as_uuid=False), nullable=True))
        op.add_column(table, sa.Column('sequence', sa.Integer(), nullable=True))
    op.add_column('erasure', sa.Column('event_id', postgresql.UUID(as_uuid=False), nullable=True))

    op.execute(
        "UPDATE person p SET event_id = o.event_id, sequence = o.sequence FROM outbox o"
        " WHERE o.aggregate_key = p.cpf AND o.event_type = 'person_created'"
    )
    for kind in ITEMS:
        op.execute(
            f"UPDATE {kind} i SET event_id = o.event_id, sequence = o.sequence FROM outbox o"
            f" WHERE o.event_type = '{kind}_added' AND (o.payload -> 'data' ->> 'item_id')::bigint = i.id"
        )
    op.execute(
        "UPDATE erasure e SET event_id = o.event_id FROM outbox o"
        " WHERE o.event_type = 'person_erased' AND o.aggregate_key = e.cpf_hash AND o.sequence = e.sequence"
    )
    # An erasure's event only names it: one lost is given a new id.
    op.execute("UPDATE erasure SET event_id = gen_random_uuid() WHERE event_id IS NULL")

    bind = op.get_bind()
    for table in ('person', *ITEMS):
        missing = bind.execute(sa.text(f"SELECT count(*) FROM {table} WHERE event_id IS NULL")).scalar()
        if missing:
            raise RuntimeError(
                f"{missing} {table} rows have no event in the outbox to take their event id and sequence from"
            )
        op.alter_column(table, 'event_id', nullable=False)
        op.alter_column(table, 'sequence', nullable=False)
    op.alter_column('erasure', 'event_id', nullable=False)


def downgrade() -> None:
    op.drop_column('erasure', 'event_id')
    for table in ('person', *ITEMS):
        op.drop_column(table, 'sequence')
        op.drop_column(table, 'event_id')
