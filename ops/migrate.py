"""Create each service's database if it is missing, then apply its migrations.

    python -m ops.migrate [--config config.yml] [person|score ...]

The database URIs come from ``config.yml`` (``PERSON_DB_URI``, ``SCORE_DB_URI``).
Safe to run again, and from two processes at once.
"""

import argparse
import logging
import sys

import ops.quiet  # noqa: F401  (first: it silences eventlet's import-time banner)

# isort: split
from alembic import command
from alembic.config import Config as AlembicConfig
from psycopg2 import errors as pg_errors
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError, ProgrammingError

from ops.cli import fail
from ops.config import load_config

_log = logging.getLogger("ops.migrate")

# service -> (DB_URIS key, Alembic script location)
SERVICES = {
    "person": ("person:PersonBase", "person:migrations"),
    "score": ("score:ScoreBase", "score:migrations"),
}


def ensure_database(uri: str) -> bool:
    """Create the database named in ``uri`` if missing; True if it was created."""
    url = make_url(uri)
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            exists = conn.execute(
                text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": url.database}
            ).first()
            if exists:
                return False
            quoted = conn.dialect.identifier_preparer.quote(url.database)
            try:
                conn.execute(text(f"CREATE DATABASE {quoted}"))
            except ProgrammingError as exc:
                if isinstance(exc.orig, pg_errors.DuplicateDatabase):
                    return False  # another migrate run created it first
                raise
            return True
    finally:
        admin.dispose()


def upgrade(uri: str, script_location: str, revision: str = "head") -> None:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", script_location)
    # Alembic's ini parser treats % as interpolation: escape it in passwords.
    cfg.set_main_option("sqlalchemy.url", uri.replace("%", "%%"))
    command.upgrade(cfg, revision)


def migrate(config: dict, services=tuple(SERVICES)) -> None:
    for service in services:
        key, script_location = SERVICES[service]
        uri = config["DB_URIS"][key]
        if ensure_database(uri):
            _log.info("created database %s", make_url(uri).database)
        upgrade(uri, script_location)
        _log.info("%s database is at the latest migration", service)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="path to config.yml (default: the repository's)")
    parser.add_argument("services", nargs="*", metavar="SERVICE", help="person, score (default: both)")
    args = parser.parse_args(argv)
    unknown = set(args.services) - set(SERVICES)
    if unknown:
        parser.error(f"unknown service(s): {', '.join(sorted(unknown))}")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
    try:
        migrate(load_config(args.config), args.services or list(SERVICES))
    except OperationalError as exc:  # PostgreSQL down, or refusing us
        return fail("migrate", f"PostgreSQL is unreachable ({str(exc.orig).strip().splitlines()[0]}).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
