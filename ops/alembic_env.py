"""The body of every service's Alembic ``env.py``: online migrations only."""

from alembic import context
from sqlalchemy import create_engine, pool


def run_migrations(metadata) -> None:
    url = context.config.get_main_option("sqlalchemy.url")
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=metadata, compare_type=True)
        with context.begin_transaction():
            # Two migrate runs at once: the second waits here, then finds
            # nothing to do, instead of racing on CREATE TABLE.
            connection.exec_driver_sql("SELECT pg_advisory_xact_lock(72417)")
            context.run_migrations()
