"""Fixtures of the fault-injection suite.

A private RabbitMQ node for the session (never the machine's shared broker), a
vhost of each test's own on it, empty databases, and the services as real
``nameko run`` processes with short timings. Every fixture puts back what it
broke: the broker's app is started again and score's table renamed back even
when a test fails half-way.
"""

import logging
import uuid

import pytest
from sqlalchemy import text

from harness.faults import FaultSystem, Invariant, RabbitNode, Report

log = logging.getLogger("tests.faults")


@pytest.fixture(scope="session")
def rabbit_node():
    node = RabbitNode()
    try:
        node.start()
        yield node
    finally:
        node.stop()


@pytest.fixture
def broker(rabbit_node):
    """The private node; its app is running again after the test whatever happened."""
    yield rabbit_node
    if not rabbit_node.app_running:
        rabbit_node.start_app()


@pytest.fixture
def vhost_uri(broker):
    """An AMQP URI on a vhost of this test's own: queues of earlier tests cannot interfere."""
    vhost = f"f-{uuid.uuid4().hex[:10]}"
    uri = broker.add_vhost(vhost)
    yield uri
    if not broker.app_running:
        broker.start_app()
    broker.delete_vhost(vhost)


@pytest.fixture
def system(broker, vhost_uri, db_uris, clean_databases, tmp_path):
    """A :class:`FaultSystem` on the private node, not started; stopped at teardown."""
    running = FaultSystem(vhost_uri, db_uris, tmp_path / "logs")
    try:
        yield running
    finally:
        if not broker.app_running:  # a graceful stop needs the broker
            broker.start_app()
        running.stop_all()


@pytest.fixture
def invariant(system, person_engine, score_engine):
    return Invariant(person_engine, score_engine, system)


@pytest.fixture(scope="session")
def report():
    return Report()


@pytest.fixture
def score_table_restored(score_engine):
    """Scenarios that rename score's ``scored_item`` put it back here if they fail."""
    yield score_engine
    with score_engine.begin() as conn:
        renamed = conn.execute(text("SELECT to_regclass('scored_item_x') IS NOT NULL")).scalar_one()
        if renamed:
            log.warning("renaming scored_item_x back to scored_item after a failed scenario")
            conn.execute(text("ALTER TABLE scored_item_x RENAME TO scored_item"))
