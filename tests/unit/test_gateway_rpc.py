"""The gateway's RPC deadline proxy (gateway/rpc.py) maps what a broker that
cannot take a request raises to 503, whatever library layer it comes from.
The broker is replaced here by a publish that raises; the fault and cluster
suites make the same failures happen on real brokers."""

import eventlet
import pytest
from amqp.exceptions import ConnectionForced, InternalError
from kombu.exceptions import OperationalError

from gateway.exceptions import BrokerUnavailable, error_for
from gateway.rpc import TimedServiceProxy, TransientReplyListener, _TimedMethodProxy


class _Listener(TransientReplyListener):
    routing_key = "a" * 32
    _reply_events = {}


class _Container:
    config = {"AMQP_URI": "amqp://unused"}
    service_name = "gateway"


class _WorkerContext:
    container = _Container()


@pytest.mark.parametrize(
    "raised",
    [
        # a node stopping closes its connections with 541 (seen in the rolling-restart scenario)
        InternalError("(0, 0): (541) INTERNAL_ERROR"),
        ConnectionForced("broker forced connection closure"),
        OperationalError("connection refused"),
        ConnectionResetError(104, "Connection reset by peer"),
    ],
    ids=["541", "320", "kombu", "socket"],
)
def test_a_publish_the_broker_cannot_take_is_503(monkeypatch, raised):
    def publish(self, *args, **kwargs):
        eventlet.sleep(0)
        raise raised

    monkeypatch.setattr(_TimedMethodProxy, "call_async", publish)
    seen = {"person": float("inf")}  # the consumer check trusts this, and makes no connection
    proxy = TimedServiceProxy(_WorkerContext(), "person", _Listener(), timeout=3.0, consumers_seen=seen)
    with pytest.raises(BrokerUnavailable) as refused:
        proxy.add_income("52998224725", {})
    assert error_for(refused.value)[:2] == (503, "SERVICE_UNAVAILABLE")


def test_a_call_before_the_reply_queue_exists_is_503_at_once():
    listener = _Listener()
    listener.routing_key = None
    proxy = TimedServiceProxy(_WorkerContext(), "person", listener, timeout=3.0, consumers_seen={})
    with pytest.raises(BrokerUnavailable, match="not connected to the message broker"):
        proxy.health()
