"""The services' RPC entrypoint (reliable_events.rpc): a reply the broker
cannot take is logged, not raised (raised, it would end the whole process).
The publish is replaced here by one that raises what brokers were seen to
raise; the fault suite stops real brokers mid-request."""

import pytest
from amqp.exceptions import ConnectionForced, InternalError
from kombu.exceptions import OperationalError
from nameko.rpc import Responder

from reliable_events.rpc import QuorumRpcConsumer, ResilientRpc


class _Message:
    properties = {"reply_to": "a" * 32, "correlation_id": "c-1"}


class _WorkerContext:
    service_name = "person"


@pytest.mark.parametrize(
    "raised",
    [
        InternalError("(0, 0): (541) INTERNAL_ERROR"),
        ConnectionForced("broker forced connection closure"),
        OperationalError("connection refused"),
        BrokenPipeError(32, "Broken pipe"),
    ],
    ids=["541", "320", "kombu", "socket"],
)
def test_a_reply_the_broker_cannot_take_does_not_end_the_service(monkeypatch, raised, caplog):
    def send_response(self, result, exc_info):
        raise raised

    monkeypatch.setattr(Responder, "send_response", send_response)
    container = type("Container", (), {"config": {"AMQP_URI": "amqp://unused"}})()
    entrypoint = ResilientRpc()
    entrypoint.method_name = "add_income"
    entrypoint.rpc_consumer = QuorumRpcConsumer()  # an unbound one of this test's own
    entrypoint.container = entrypoint.rpc_consumer.container = container
    assert entrypoint.handle_result(_Message(), _WorkerContext(), {"id": 1}, None) == ({"id": 1}, None)
    assert "could not send the reply to person.add_income" in caplog.text
