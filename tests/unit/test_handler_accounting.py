"""What a batch handler counts and logs after its batch committed: each event
applied once, even when it came twice in the batch (published twice: by the
sweep and by its writer)."""

import logging
import types

import pytest

from contracts.events import PERSON_EVENTS
from observability.metrics import EVENT_METRICS, EVENTS_APPLIED, EVENTS_DUPLICATE
from reliable_events.consumer import ReliableQueueConsumer
from reliable_events.handlers import ReliableEventHandler

EVENT = PERSON_EVENTS.parse(PERSON_EVENTS.new("income_added", "52998224725", 2, {"item_id": 1, "value": "1.00"}))


def counted(metric):
    return metric.labels("income_added")._value.get()


@pytest.mark.parametrize("applied", [None, [EVENT]], ids=["handler returned None", "handler returned the fresh"])
def test_an_event_twice_in_one_batch_counts_once(caplog, applied):
    handler = ReliableEventHandler(PERSON_EVENTS, "income_added", metrics=EVENT_METRICS)
    worker = types.SimpleNamespace(call_id="score.on_income_added.1")
    messages = [types.SimpleNamespace(headers={}), types.SimpleNamespace(headers={})]
    applied_before, duplicates_before = counted(EVENTS_APPLIED), counted(EVENTS_DUPLICATE)

    with caplog.at_level(logging.INFO, logger="reliable_events.handlers"):
        handler._applied(worker, [EVENT, dict(EVENT)], messages, applied)

    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("applied event")]
    assert lines == [f"applied event {EVENT['event_id']} income_added cpf=52998224725 sequence=2"]
    assert counted(EVENTS_APPLIED) - applied_before == 1
    assert counted(EVENTS_DUPLICATE) - duplicates_before == 1


@pytest.mark.parametrize("failure", [ConnectionResetError(104, "Connection reset by peer"), BrokenPipeError(32, "")])
def test_an_ack_on_a_connection_the_broker_reset_does_not_end_the_service(caplog, failure):
    """A node going away mid-ack (seen in the cluster's rolling restart): Nameko
    lets a socket error through, which ends the worker's thread and the service
    with it. The message stays unacked, comes back, and the inbox skips it."""

    def ack():
        raise failure

    message = types.SimpleNamespace(channel=types.SimpleNamespace(connection=object()), ack=ack, requeue=ack)
    consumer = ReliableQueueConsumer()
    with caplog.at_level(logging.WARNING, logger="reliable_events.consumer"):
        consumer.ack_message(message)
        consumer.requeue_message(message)
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == [
        "could not ack a message",
        "could not requeue a message",
    ]
