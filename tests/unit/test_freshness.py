"""The gateway's read-your-writes wait (pure logic: a fake read, notices by hand)."""

import collections

import eventlet
import pytest

from contracts.errors import ScoreNotFound
from gateway.freshness import ReplicaWatch


class FakeConsumer:
    def __init__(self):
        self.acked = []

    def ack_message(self, message):
        self.acked.append(message)


@pytest.fixture
def watch():
    # What setup() sets, without a container or a broker.
    replica = ReplicaWatch()
    replica.timeout = 0.5
    replica._waiting = collections.defaultdict(set)
    replica.queue_consumer = FakeConsumer()
    return replica


def reads(*values):
    """A read that answers ``applied_sequence`` from ``values`` in turn (None: unknown CPF)."""
    answers = list(values)
    calls = []

    def read():
        value = answers.pop(0) if len(answers) > 1 else answers[0]
        calls.append(value)
        return None if value is None else {"applied_sequence": value}

    return read, calls


def test_already_applied_returns_at_once(watch):
    read, calls = reads(3)
    result, stale, waited = watch.read_at_least("1", 3, read)
    assert (result, stale, calls) == ({"applied_sequence": 3}, False, [3])
    assert not watch._waiting  # nothing left registered


def test_a_notice_for_the_cpf_wakes_the_read(watch):
    read, calls = reads(1, 2)
    eventlet.spawn_after(0.05, watch.handle_message, {"cpfs": ["other", "1"]}, "message")
    result, stale, waited = watch.read_at_least("1", 2, read)
    assert (result["applied_sequence"], stale) == (2, False)
    assert calls == [1, 2]
    assert waited < watch.timeout
    assert watch.queue_consumer.acked == ["message"]


def test_a_notice_for_another_cpf_does_not_wake_it(watch):
    read, calls = reads(1)
    eventlet.spawn_after(0.05, watch.handle_message, {"cpfs": ["2"]}, "message")
    result, stale, waited = watch.read_at_least("1", 2, read)
    assert stale is True and result == {"applied_sequence": 1}
    assert calls == [1, 1]  # the first read and the last one at the bound, no more
    assert waited >= watch.timeout


def test_a_lost_notice_is_covered_by_the_last_read(watch):
    read, calls = reads(1, 2)  # applied meanwhile, but no notice came
    result, stale, _ = watch.read_at_least("1", 2, read)
    assert (result["applied_sequence"], stale) == (2, False)


def test_an_erasure_applied_answers_at_once(watch):
    """Score answers an erased CPF with ScoreNotFound carrying the erasure's
    sequence: a read waiting for the erasure is answered by it, not by the bound."""
    erased = ScoreNotFound("No score for CPF 1.", "5")  # RPC hands the arguments back as strings
    result, stale, waited = watch.read_at_least("1", 5, lambda: erased)
    assert (result, stale) == (erased, False)
    assert waited < watch.timeout / 2
    # An older erasure (the person was created again since) does not reach a later write.
    assert watch.read_at_least("1", 6, lambda: erased)[:2] == (erased, True)


def test_an_unknown_cpf_is_none_and_stale(watch):
    read, _ = reads(None)
    assert watch.read_at_least("1", 1, read)[:2] == (None, True)


@pytest.mark.parametrize("body", [None, [], {"cpfs": "1"}, {"other": 1}, "text"])
def test_a_malformed_notice_is_acked_and_ignored(watch, body):
    watch.handle_message(body, "message")
    assert watch.queue_consumer.acked == ["message"]
