"""Dead letters on the real broker: the delivery limit parks a message that
keeps coming back, and an operator purges what is parked (over RPC and with
the ``deadletters`` command)."""

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from nameko.standalone.events import event_dispatcher
from nameko.testing.services import entrypoint_hook

from contracts.events import PERSON_EVENTS
from harness.rabbit import amqp_connection, message_count
from harness.waits import wait_for
from score.service import ScoreService

pytestmark = pytest.mark.integration

INCOME_QUEUE = "evt-person-income_added--score.on_income_added"
ROOT = Path(__file__).resolve().parents[2]
DEADLETTERS = str(Path(sys.executable).with_name("deadletters"))


def dead_letters(container, event_id=None):
    with entrypoint_hook(container, "list_dead_letters") as listing:
        return listing(event_id)


def test_poison_message_dead_lettered_at_delivery_limit(run_container, fresh_config):
    """A message that kills its consumer every time (here: a consumer that dies
    holding it, as a process crashing on it would) is redelivered at most
    ``EVENT_DELIVERY_LIMIT`` more times, then parked in the dead letters."""
    limit = 2
    fresh_config["EVENT_DELIVERY_LIMIT"] = limit
    score = run_container(ScoreService)  # declares its queues, with the limit
    score.stop()  # nothing else consumes them now
    poison = PERSON_EVENTS.new("income_added", "52998224725", 2, {"item_id": 1, "type": "renting", "value": "10.00"})
    event_dispatcher(fresh_config)("person", "income_added", poison)

    deliveries = 0
    for _ in range(limit + 5):  # bounded: a queue without the limit would go on for ever
        conn = amqp_connection(fresh_config["AMQP_URI"])
        try:
            message = conn.channel().basic_get(INCOME_QUEUE, no_ack=False)
        finally:
            conn.close()  # the consumer dies holding it: the broker takes it back
        if message is None:
            break
        deliveries += 1
    assert deliveries == limit + 1
    assert message_count(fresh_config["AMQP_URI"], f"{INCOME_QUEUE}.dead") == 1

    score = run_container(ScoreService)
    [letter] = dead_letters(score)
    assert letter["event_id"] == poison["event_id"]
    assert letter["queue"] == INCOME_QUEUE
    assert "delivery_limit" in letter["reason"], letter


def _park_malformed(container, fresh_config, count):
    """``count`` events that are dead-lettered at once (no item id: unusable data)."""
    dispatch = event_dispatcher(fresh_config)
    events = [PERSON_EVENTS.new("income_added", "52998224725", n, {"value": "10.00"}) for n in range(2, 2 + count)]
    for event in events:
        dispatch("person", "income_added", event)
    wait_for(lambda: len(dead_letters(container)) == count, 30, f"{count} dead letters")
    return [event["event_id"] for event in events]


def test_purge_dead_letters(run_container, fresh_config):
    score = run_container(ScoreService)
    first, second, third = _park_malformed(score, fresh_config, 3)

    with entrypoint_hook(score, "purge_dead_letters") as purge:
        purged = purge(first)
    assert [letter["event_id"] for letter in purged] == [first]
    assert sorted(letter["event_id"] for letter in dead_letters(score)) == sorted([second, third])
    with entrypoint_hook(score, "purge_dead_letters") as purge:
        assert purge(str(uuid.uuid4())) == []  # an unknown id purges nothing
    assert len(dead_letters(score)) == 2

    # The command line, on the same broker: everything that is left.
    env = {"AMQP_URI": fresh_config["AMQP_URI"], "PATH": "/usr/bin:/bin", "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(
        [DEADLETTERS, "purge", "--all"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert sorted(letter["event_id"] for letter in json.loads(result.stdout)) == sorted([second, third])
    assert dead_letters(score) == []
    assert message_count(fresh_config["AMQP_URI"], f"{INCOME_QUEUE}.dead") == 0
