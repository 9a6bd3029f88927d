"""A credential per service, with only what its job needs (ops/permissions.py):
a RabbitMQ user each on a private node, a PostgreSQL role each for person and
score on the test's databases, none for the gateway, all made by ``ops.provision``
as compose's ``migrate`` job makes them. The whole flow works
with them, and what a leaked credential could forge or read is refused:

- an ``income_added`` published to ``person.events`` with score's or the
  gateway's credentials: refused by the broker, and the score does not change;
- an RPC call a service never makes (the gateway calling score's rebuild,
  score calling person's ``add_income``): refused;
- score's role connecting to person's database, or person's to score's: refused.
"""

import json
import os
import subprocess
import sys
import time
import uuid

import amqp
import psycopg2
import pytest
import requests
from sqlalchemy import create_engine, make_url, text

from contracts.events import PERSON_EVENTS
from harness.api import HTTP_TIMEOUT
from harness.cpf import cpfs
from harness.faults import FaultSystem
from harness.rabbit import RabbitNode, amqp_connection
from ops.permissions import DATABASES, PERSON_EVENTS_EXCHANGE, RPC_EXCHANGE
from ops.provision import BROKER_USERS, provision_broker, provision_databases

pytestmark = [pytest.mark.e2e, pytest.mark.faults]

SERVICES = ("person", "score", "gateway")


@pytest.fixture(scope="module")
def managed():
    """A private node with the management API, which ops.provision talks to (as in compose)."""
    with RabbitNode(prefix="perms", management=True) as node:
        yield node


@pytest.fixture
def system(managed, db_uris, clean_databases, tmp_path):
    """The services, not started, on a vhost of their own on that node."""
    running = FaultSystem(managed.add_vhost(), db_uris, tmp_path / "logs")
    try:
        yield running
    finally:
        running.stop_all()
        managed.delete_vhost(running.vhost)


@pytest.fixture
def users(managed, system):
    """Each service's broker user, made by ``ops.provision``; their AMQP URIs."""
    passwords = {service: uuid.uuid4().hex for service in SERVICES}
    provision_broker(managed.api_url, system.env["AMQP_URI"], passwords)
    yield {
        service: f"amqp://{BROKER_USERS[service]}:{passwords[service]}@127.0.0.1:{managed.port}/{system.vhost}"
        for service in SERVICES
    }
    for user in BROKER_USERS.values():
        managed.ctl("delete_user", user, check=False)


@pytest.fixture
def roles(db_uris):
    """Person's and score's database roles, made by ``ops.provision`` (under
    names of this run's own: the machine's PostgreSQL is shared); their
    database URIs. Dropped afterwards, and the databases open to all again."""
    names = {service: f"{service}_{uuid.uuid4().hex[:8]}" for service in DATABASES}
    try:
        yield provision_databases(db_uris, {service: uuid.uuid4().hex for service in DATABASES}, names)
    finally:
        for service, role in names.items():
            url = make_url(db_uris[DATABASES[service]])
            admin = create_engine(url, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.execute(text(f'GRANT CONNECT, TEMPORARY ON DATABASE "{url.database}" TO PUBLIC'))
                conn.execute(text(f'DROP OWNED BY "{role}"'))
                conn.execute(text(f'DROP ROLE IF EXISTS "{role}"'))
            admin.dispose()


def publish(uri, exchange, routing_key, body, **properties):
    """Publish with confirms; the broker's refusal (a channel closed 403) raised."""
    conn = amqp_connection(uri, confirm_publish=True)
    try:
        channel = conn.channel()
        channel.basic_publish(
            amqp.Message(json.dumps(body), content_type="application/json", **properties),
            exchange=exchange,
            routing_key=routing_key,
        )
    finally:
        try:
            conn.close()
        except Exception:  # noqa: BLE001  (a connection the refusal closed)
            pass


def forged_income(cpf):
    """A well-formed ``income_added`` that person never wrote."""
    return PERSON_EVENTS.new("income_added", cpf, 99, {"id": 999, "type": "forged", "value": "1000000.00"})


def test_each_service_with_its_own_credentials_and_leaked_ones_forge_nothing(system, users, roles, report):
    nowhere = "postgresql+psycopg2://nobody@127.0.0.1:1/none"  # the gateway needs no database
    system.start("person", AMQP_URI=users["person"], PERSON_DB_URI=roles["person"], SCORE_DB_URI=nowhere)
    system.start("score", AMQP_URI=users["score"], PERSON_DB_URI=nowhere, SCORE_DB_URI=roles["score"])
    system.start("gateway", AMQP_URI=users["gateway"], PERSON_DB_URI=nowhere, SCORE_DB_URI=nowhere)
    system.wait_gateway(timeout=60)
    cpf = cpfs(1, start=777)[0]
    system.create_people([cpf])
    written = [system.add_item(cpf, kind).accepted() for kind in ("income", "asset", "debt")]
    sequence = 1 + len(written)
    url = f"{system.url}/{cpf}/score"
    before = requests.get(url, params={"min_sequence": sequence}, timeout=HTTP_TIMEOUT)
    assert before.status_code == 200 and before.json()["stale"] is False, before.text

    # Each container's healthcheck (ops.ping) calls its service's health with its own user.
    for service in ("person", "score"):
        ping = subprocess.run(
            [sys.executable, "-m", "ops.ping", service],
            env={**os.environ, "AMQP_URI": users[service]},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert ping.returncode == 0, ping.stderr

    refused = {}
    attempts = {
        "score publishes income_added": ("score", PERSON_EVENTS_EXCHANGE, "income_added", forged_income(cpf), {}),
        "gateway publishes income_added": ("gateway", PERSON_EVENTS_EXCHANGE, "income_added", forged_income(cpf), {}),
        "gateway calls score.rebuild_replica": (
            "gateway",
            RPC_EXCHANGE,
            "score.rebuild_replica",
            {"args": [], "kwargs": {}},
            {"reply_to": uuid.uuid4().hex, "correlation_id": "forged"},
        ),
        "score calls person.add_income": (
            "score",
            RPC_EXCHANGE,
            "person.add_income",
            {"args": [cpf, {"type": "forged", "value": "1000000.00"}], "kwargs": {}},
            {"reply_to": str(uuid.uuid4()), "correlation_id": "forged"},
        ),
    }
    for name, (service, exchange, key, body, properties) in attempts.items():
        with pytest.raises(amqp.exceptions.AccessRefused) as error:
            publish(users[service], exchange, key, body, **properties)
        refused[name] = str(error.value).split(" - ")[-1][:80]

    for service, other in (("score", "person"), ("person", "score")):
        crossing = make_url(roles[service]).set(database=make_url(roles[other]).database, drivername="postgresql")
        with pytest.raises(psycopg2.OperationalError, match="permission denied for database"):
            psycopg2.connect(crossing.render_as_string(hide_password=False)).close()
        refused[f"{service}'s role connects to {other}'s database"] = "permission denied for database"

    # Given time to arrive had it been routed, nothing changed.
    time.sleep(1)
    after = requests.get(url, timeout=HTTP_TIMEOUT).json()
    assert (after["score"], after["applied_sequence"]) == (before.json()["score"], sequence), after
    person = requests.get(f"{system.url}/person/{cpf}", timeout=HTTP_TIMEOUT).json()
    assert [income["type"] for income in person["incomes"]] == [written[0].type], person
    report("18 a broker user per service", refused=refused, score_unchanged=after["score"])
