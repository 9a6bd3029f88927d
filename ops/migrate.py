"""Create each service's database if it is missing, then apply its migrations;
and bring the broker's RPC and retry queues to the type the services declare.

    python -m ops.migrate [--config config.yml] [person|score ...]

The database URIs come from ``config.yml`` (``PERSON_DB_URI``, ``SCORE_DB_URI``).
Safe to run again, and from two processes at once.

The ``rpc-<service>`` queues and the event handlers' retry queues are quorum
queues (``reliable_events.rpc``, ``reliable_events.queues``); earlier
versions declared them classic, and a queue cannot change type. A classic one
left by an earlier version is deleted and declared again: an RPC queue if no
service consumes from it, a retry queue once its messages have gone back to
their event queue (see :func:`migrate_queue_types`).
"""

import argparse
import logging
import sys
import time

import ops.quiet  # noqa: F401  (first: it silences eventlet's import-time banner)

# isort: split
from alembic import command
from alembic.config import Config as AlembicConfig
from amqp.exceptions import PreconditionFailed
from kombu import Connection, Queue
from kombu.exceptions import OperationalError as BrokerUnreachable
from psycopg2 import errors as pg_errors
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError, ProgrammingError

from ops.cli import fail
from ops.config import load_config
from ops.queues import event_queues
from reliable_events.queues import retry_queues
from reliable_events.rpc import RPC_QUEUE_ARGUMENTS

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


def upgrade(uri: str, script_location: str, revision: str = "head", config: dict | None = None) -> None:
    """Migrate one database; ``config`` (config.yml's) is handed to the
    migrations that need a value of it (``context.config.attributes``): a
    migration imports no live code."""
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", script_location)
    # Alembic's ini parser treats % as interpolation: escape it in passwords.
    cfg.set_main_option("sqlalchemy.url", uri.replace("%", "%%"))
    cfg.attributes["service_config"] = config or {}
    command.upgrade(cfg, revision)


def migrate(config: dict, services=tuple(SERVICES)) -> None:
    for service in services:
        key, script_location = SERVICES[service]
        uri = config["DB_URIS"][key]
        if ensure_database(uri):
            _log.info("created database %s", make_url(uri).database)
        upgrade(uri, script_location, config=config)
        _log.info("%s database is at the latest migration", service)


def queues_of_a_type(config: dict, services) -> list:
    """The queues whose type changed since earlier versions, as the services declare them."""
    queues = [
        Queue(f"rpc-{service}", durable=True, auto_delete=False, queue_arguments=RPC_QUEUE_ARGUMENTS)
        for service in services
    ]
    if "score" in services:
        delays = [float(delay) for delay in config["EVENT_RETRY_DELAYS"]]
        for queue in event_queues():
            queues += retry_queues(queue, delays)
    return queues


def migrate_queue_types(config: dict, services=tuple(SERVICES), wait: float | None = None) -> list:
    """Replace each queue of :func:`queues_of_a_type` that exists with another
    type (classic, from an earlier version); the names of those replaced.

    An RPC queue is replaced only if no service consumes from it. A retry
    queue's messages go back to their event queue as they expire: it is
    replaced once empty, waited for at most ``wait`` seconds (default: the
    longest retry delay, and a margin).
    """
    if wait is None:
        wait = max(float(delay) for delay in config["EVENT_RETRY_DELAYS"]) + 5
    replaced = []
    with Connection(config["AMQP_URI"], connect_timeout=5) as conn:
        conn.ensure_connection(max_retries=1, interval_start=0)
        for queue in queues_of_a_type(config, services):
            try:
                queue(conn.channel()).declare()
                continue
            except PreconditionFailed:
                pass  # another type; that channel is closed now
            channel = conn.channel()
            deadline = time.monotonic() + wait
            while True:
                _, messages, consumers = channel.queue_declare(queue.name, passive=True)
                if consumers and queue.name.startswith("rpc-"):
                    raise RuntimeError(
                        f"{queue.name} is a classic queue from an earlier version and {consumers} service "
                        "instance(s) consume from it: stop them, then migrate again."
                    )
                # An RPC queue's requests are past their deadline or close to it: their callers get 504.
                if not messages or queue.name.startswith("rpc-"):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{queue.name} is a classic queue from an earlier version and still holds {messages} "
                        f"message(s) after {wait:.0f}s: is an earlier score still running? Stop it, then migrate again."
                    )
                time.sleep(0.5)
            channel.queue_delete(queue.name)
            queue(channel).declare()
            replaced.append(queue.name)
            _log.info("%s is now a quorum queue", queue.name)
    return replaced


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="path to config.yml (default: the repository's)")
    parser.add_argument("services", nargs="*", metavar="SERVICE", help="person, score (default: both)")
    args = parser.parse_args(argv)
    unknown = set(args.services) - set(SERVICES)
    if unknown:
        parser.error(f"unknown service(s): {', '.join(sorted(unknown))}")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
    config = load_config(args.config)
    services = args.services or list(SERVICES)
    try:
        migrate(config, services)
    except OperationalError as exc:  # PostgreSQL down, or refusing us
        return fail("migrate", f"PostgreSQL is unreachable ({str(exc.orig).strip().splitlines()[0]}).")
    try:
        migrate_queue_types(config, services)
    except (BrokerUnreachable, OSError) as exc:
        # The services wait for the broker themselves; only an old queue type would stop them.
        _log.warning("RabbitMQ is unreachable (%s): the queues' types were not checked", exc)
    except RuntimeError as exc:
        return fail("migrate", str(exc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
