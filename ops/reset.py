"""Back to a clean local state: drop person's and score's databases and delete
the project's queues on the broker (its RPC queues, the event queues with their
retry and dead-letter queues: dead letters are lost), after a confirmation.

    make reset                    # asks first
    python -m ops.reset --yes     # does not ask

Stop the services first. ``make run`` (or ``make migrate``) creates everything again.
"""

import argparse
import sys

import ops.quiet  # noqa: F401  (first: before anything imports eventlet)

# isort: split
from amqp.exceptions import NotFound
from kombu import Connection
from kombu.exceptions import OperationalError
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError as DatabaseUnreachable

from ops.cli import fail, safe_uri
from ops.config import load_config
from ops.queues import event_queues
from reliable_events.queues import dead_letter_queue_name, retry_queue_name

PROG = "reset"


def queue_names(config: dict) -> list:
    """Every durable queue the services declare (the gateways' notice and reply
    queues go away with their connections)."""
    names = ["rpc-person", "rpc-score"]
    for queue in event_queues():
        names += [queue, dead_letter_queue_name(queue)]
        names += [retry_queue_name(queue, n) for n in range(1, len(config["EVENT_RETRY_DELAYS"]) + 1)]
    return names


def drop_databases(config: dict) -> list:
    dropped = []
    for uri in config["DB_URIS"].values():
        url = make_url(uri)
        admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                quoted = conn.dialect.identifier_preparer.quote(url.database)
                conn.execute(text(f"DROP DATABASE IF EXISTS {quoted} WITH (FORCE)"))
        finally:
            admin.dispose()
        dropped.append(url.database)
    return dropped


def delete_queues(amqp_uri: str, names: list) -> list:
    deleted = []
    with Connection(amqp_uri, connect_timeout=5) as conn:
        conn.ensure_connection(max_retries=1, interval_start=0)
        for name in names:
            channel = conn.channel()  # a failed passive declare closes its channel
            try:
                channel.queue_declare(name, passive=True)
            except NotFound:
                continue
            channel.queue_delete(name)
            deleted.append(name)
            channel.close()
    return deleted


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="path to config.yml (default: the repository's)")
    parser.add_argument("--yes", action="store_true", help="do not ask")
    args = parser.parse_args(argv)
    config = load_config(args.config)
    databases = [make_url(uri).database for uri in config["DB_URIS"].values()]
    if not args.yes:
        answer = input(
            f"Drop the databases {', '.join(databases)} and delete this project's queues on "
            f"{safe_uri(config['AMQP_URI'])} (dead letters included)? Type 'yes': "
        )
        if answer.strip() != "yes":
            print(f"{PROG}: nothing done.")
            return 1
    try:
        print(f"dropped databases: {', '.join(drop_databases(config))}")
    except DatabaseUnreachable as exc:
        return fail(PROG, f"PostgreSQL is unreachable ({str(exc.orig).strip().splitlines()[0]}).")
    try:
        deleted = delete_queues(config["AMQP_URI"], queue_names(config))
    except (OperationalError, OSError) as exc:
        return fail(PROG, f"the message broker at {safe_uri(config['AMQP_URI'])} is unreachable ({exc}).")
    print(f"deleted {len(deleted)} queues")
    return 0


if __name__ == "__main__":
    sys.exit(main())
