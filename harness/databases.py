"""Private, migrated databases for person and score, dropped when done.

The server comes from ``$HARNESS_PG_URI`` (a SQLAlchemy URL of its maintenance
database, default the local ``postgres``); the databases are
``person_<prefix>_<id>`` and ``score_<prefix>_<id>``, migrated with the
project's own ``ops.migrate`` (the Alembic migrations the services run on).
"""

import os

import psycopg2
from sqlalchemy.engine import make_url

# Imported here, in whichever thread imports this module first (the main one):
# it imports nameko and so eventlet, and a thread that first imports eventlet
# and then ends leaves its join() waiting for ever.
from ops.migrate import migrate

PG_BASE = os.environ.get("HARNESS_PG_URI", "postgresql+psycopg2://postgres@localhost:5432/postgres")
KEYS = {"person": "person:PersonBase", "score": "score:ScoreBase"}
# How many of person's events score has applied, by its inbox (a watermark per
# person, starting after the person's erasure if it was erased and created
# again), erasures apart: for a test or the bench to wait on.
APPLIED_EVENTS = (
    "SELECT coalesce(sum(k.applied_through - coalesce(e.sequence, 0) + cardinality(k.applied_above)), 0)"
    " FROM known_person k LEFT JOIN erased_person e ON e.cpf_hash = k.cpf_hash"
)


def database_uris(prefix: str, run_id: str, base: str = PG_BASE) -> dict:
    """``{"person:PersonBase": uri, "score:ScoreBase": uri}`` for this run (nothing created yet)."""
    url = make_url(base)
    return {
        key: url.set(database=f"{service}_{prefix}_{run_id}").render_as_string(hide_password=False)
        for service, key in KEYS.items()
    }


def create_databases(prefix: str, run_id: str, base: str = PG_BASE) -> dict:
    """Create and migrate both databases; return their SQLAlchemy URIs (as ``DB_URIS``)."""
    uris = database_uris(prefix, run_id, base)
    migrate({"DB_URIS": uris})
    return uris


def drop_databases(uris: dict, base: str = PG_BASE) -> None:
    """Drop the databases (closing any connection still open to them)."""
    conn = psycopg2.connect(dsn(base))
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            for uri in uris.values():
                name = make_url(uri).database
                cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        conn.close()


def dsn(uri: str) -> str:
    """A libpq connection string from a SQLAlchemy URL (``postgresql+psycopg2://`` -> ``postgresql://``)."""
    return make_url(uri).set(drivername="postgresql").render_as_string(hide_password=False)


def connect(uri: str, autocommit: bool = True):
    """A plain psycopg2 connection to ``uri`` (a SQLAlchemy URL)."""
    conn = psycopg2.connect(dsn(uri))
    conn.autocommit = autocommit
    return conn


def server_pids() -> list:
    """Process ids of the local PostgreSQL server (postmaster and backends), for CPU accounting."""
    from harness.processes import pids_named

    return pids_named("postgres")
