"""Create each service's own credentials from :mod:`ops.permissions`: a
RabbitMQ user per service, a PostgreSQL role for person and for score.

    python -m ops.provision [--config config.yml]

Run as the administrator (``AMQP_URI`` and the ``*_DB_URI`` of ``config.yml``
are the administrator's), after ``make migrate``; compose's ``migrate`` job
runs both. The passwords come from the environment: ``PERSON_BROKER_PASSWORD``,
``SCORE_BROKER_PASSWORD``, ``GATEWAY_BROKER_PASSWORD``, ``PERSON_DB_PASSWORD``,
``SCORE_DB_PASSWORD``. RabbitMQ is reached through its management API
(``RABBITMQ_API``, e.g. ``http://rabbitmq:15672``). Safe to run again: a
user's password and permissions, a role's password and grants, are set to
what is declared.
"""

import argparse
import logging
import os
import sys
from urllib.parse import quote, unquote, urlsplit

import ops.quiet  # noqa: F401  (first: it silences eventlet's import-time banner)

# isort: split
import requests
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from ops.cli import fail
from ops.config import load_config
from ops.permissions import BROKER_GRANTS, DATABASES, database_grants

_log = logging.getLogger("ops.provision")

# The names each service logs in with, and the variables of their passwords.
BROKER_USERS = {service: service for service in BROKER_GRANTS}
DATABASE_ROLES = {service: f"{service}_service" for service in DATABASES}
BROKER_PASSWORDS = {service: f"{service.upper()}_BROKER_PASSWORD" for service in BROKER_USERS}
DATABASE_PASSWORDS = {service: f"{service.upper()}_DB_PASSWORD" for service in DATABASE_ROLES}
PROVISION_VARIABLES = ("RABBITMQ_API", *BROKER_PASSWORDS.values(), *DATABASE_PASSWORDS.values())


def _admin(amqp_uri: str):
    """``(user, password, vhost)`` of the administrator's ``AMQP_URI`` (its first node's)."""
    parts = urlsplit(amqp_uri.split(";")[0])
    return unquote(parts.username or "guest"), unquote(parts.password or "guest"), unquote(parts.path[1:] or "/")


def provision_broker(api: str, amqp_uri: str, passwords: dict, users: dict = BROKER_USERS) -> None:
    """Each service's user on ``AMQP_URI``'s vhost, through the management API at ``api``."""
    admin_user, admin_password, vhost = _admin(amqp_uri)
    session = requests.Session()
    session.auth = (admin_user, admin_password)
    v = quote(vhost, safe="")

    def put(path, body):
        response = session.put(f"{api.rstrip('/')}/api/{path}", json=body, timeout=10)
        if response.status_code not in (201, 204):
            raise RuntimeError(f"PUT /api/{path}: {response.status_code} {response.text}")

    for service, user in users.items():
        grant = BROKER_GRANTS[service]
        u = quote(user, safe="")
        put(f"users/{u}", {"password": passwords[service], "tags": ""})
        configure, write, read = grant.vhost_permissions()
        put(f"permissions/{v}/{u}", {"configure": configure, "write": write, "read": read})
        for exchange, (topic_write, topic_read) in grant.topic_permissions().items():
            put(f"topic-permissions/{v}/{u}", {"exchange": exchange, "write": topic_write, "read": topic_read})
        _log.info("broker user %s: %s's permissions on vhost %s", user, service, vhost)


def provision_databases(db_uris: dict, passwords: dict, roles: dict = DATABASE_ROLES) -> dict:
    """Each service's role, with its database's rows (``db_uris``: the
    administrator's, by ``DB_URIS`` key); ``{service: the role's URI}``."""
    uris = {}
    for service, role in roles.items():
        url = make_url(db_uris[DATABASES[service]])
        engine = create_engine(url, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                exists = conn.execute(text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role}).first()
                verb = "ALTER" if exists else "CREATE"
                # A password cannot be a bound parameter in DDL: quoted as a literal.
                password = conn.exec_driver_sql("SELECT quote_literal(%s)", (passwords[service],)).scalar_one()
                conn.execute(text(f'{verb} ROLE "{role}" LOGIN PASSWORD {password}'))
                for statement in database_grants(role, url.database):
                    conn.execute(text(statement))
        finally:
            engine.dispose()
        uris[service] = url.set(username=role, password=passwords[service]).render_as_string(hide_password=False)
        _log.info("database role %s: %s's rows in %s", role, service, url.database)
    return uris


def main(argv=None):
    parser = argparse.ArgumentParser(prog="provision", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="config.yml")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    config = load_config(args.config)
    missing = [variable for variable in PROVISION_VARIABLES if not os.environ.get(variable)]
    if missing:
        return fail("provision", f"set {', '.join(missing)} in the environment")
    try:
        provision_databases(config["DB_URIS"], {s: os.environ[v] for s, v in DATABASE_PASSWORDS.items()})
        provision_broker(
            os.environ["RABBITMQ_API"], config["AMQP_URI"], {s: os.environ[v] for s, v in BROKER_PASSWORDS.items()}
        )
    except (requests.RequestException, RuntimeError) as exc:
        return fail("provision", f"the broker's management API refused: {exc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
