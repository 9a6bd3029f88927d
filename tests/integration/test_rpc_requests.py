"""Requests the services' RPC entrypoint (reliable_events.rpc) must survive, on
the real broker: one that names no queue for its reply is dropped without
running, and the service goes on serving (Nameko's own would run it, then
fail to reply with a KeyError that ends the process)."""

import time

import pytest
from kombu import Connection, Exchange, Producer
from nameko.standalone.rpc import ClusterRpcProxy
from sqlalchemy import text

from person.service import PersonService
from reliable_events.rpc import rpc_consumers

pytestmark = pytest.mark.integration

CPF = "52998224725"
PERSON = {"cpf": CPF, "name": "Ana", "address": "Rua A, 1", "date_of_birth": "1990-05-01"}


def test_a_request_without_reply_to_is_dropped_and_the_service_goes_on(run_container, fresh_config, person_engine):
    run_container(PersonService)
    with ClusterRpcProxy(fresh_config, timeout=20) as rpc:
        rpc.person.create_person(PERSON)

    with Connection(fresh_config["AMQP_URI"]) as conn:
        Producer(conn).publish(
            {"args": [CPF, {"type": "salary", "value": "1000.00"}], "kwargs": {}},
            exchange=Exchange("nameko-rpc", type="topic", durable=True),
            routing_key="person.add_income",
            serializer="json",
            correlation_id="no-reply-to",
        )
        deadline = time.monotonic() + 20
        while conn.default_channel.queue_declare("rpc-person", passive=True)[1]:
            assert time.monotonic() < deadline, "the request was never taken"
            time.sleep(0.1)
        assert rpc_consumers(conn, "person") == 1

    with ClusterRpcProxy(fresh_config, timeout=20) as rpc:
        answered = rpc.person.add_income(CPF, {"type": "bonus", "value": "5.00"})
    assert answered["type"] == "bonus"
    with person_engine.connect() as db:
        types = db.execute(text("SELECT type FROM income")).scalars().all()
    assert types == ["bonus"]
