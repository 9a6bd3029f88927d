"""The write path's RPC promises, made to break for real on the private node.

- A reply lost after person committed (its connection to the broker stalled
  by a proxy, then cut): the broker delivers the request again, and the
  second delivery answers the first answer and writes nothing.
- Writes answered 5xx while person was stalled (SIGSTOP): none of them runs
  when person resumes, neither those the broker had already handed to it nor
  those waiting in its queue.
- Writes waiting in the gateway behind a request out when the broker goes:
  answered 503 then, never sent; the request out keeps its deadline.
- Person not running: the gateway answers 503 at once, and that write never
  runs either.
- The gateway's reply and notice queues are consumed without acks; declared
  again after a reconnect, they survive a late cleanup of their old names (a
  lost cluster node's, here on one node): replies reach the gateway again.
"""

import os
import re
import signal
import time

import eventlet
import pytest
import requests
from sqlalchemy import text

from contracts.cpf import mask_cpfs
from harness.cpf import cpfs
from harness.faults import HTTP_TIMEOUT, RPC_TIMEOUT, Write, lost_and_doubled, wait_for
from harness.proxy import TcpProxy

pytestmark = [pytest.mark.e2e, pytest.mark.faults]

RPC_QUEUE = "rpc-person"
GATEWAY_QUEUE_PREFIXES = ("rpc.reply-gateway-", "gateway-replica-advanced-")


def _rows(person_engine, writes) -> dict:
    """Person's item ids stored for each of ``writes`` (by its distinguishing type or value)."""
    with person_engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT 'income', id, cpf, value, type FROM income UNION ALL SELECT 'asset', id, cpf, value, type"
                " FROM asset UNION ALL SELECT 'debt', id, cpf, value, NULL FROM debt"
            )
        ).all()
    stored = {}
    for kind, item_id, cpf, value, type_ in rows:
        stored.setdefault((kind, cpf, value, type_), []).append(item_id)
    return {write.number: stored[write.key] for write in writes if write.key in stored}


@pytest.fixture
def proxy(broker):
    with TcpProxy("127.0.0.1", broker.port) as running:
        yield running


def test_lost_reply_is_not_written_twice(system, broker, proxy, invariant, person_engine, report):
    # Person talks to the broker through the proxy; a long deadline lets the
    # gateway wait for the redelivered request's answer.
    system.start("person", AMQP_URI=proxy.uri(system.env["AMQP_URI"]))
    system.start("score")
    system.start("gateway", RPC_TIMEOUT=20)
    system.wait_gateway(timeout=60)
    cpf = cpfs(1)[0]
    system.create_people([cpf])
    before = system.add_item(cpf, "income").accepted()

    # From now on nothing person sends reaches the broker: not the ack of the
    # next request, not its reply, not its event.
    assert proxy.hold() >= 2, "person has no connection through the proxy"
    write = Write("asset", cpf, system.url)
    answered = eventlet.spawn(write.send, 30)
    wait_for(lambda: _rows(person_engine, [write]), 15, "person to commit the write", 0.05, system.logs)
    # Committed, its reply and ack stuck in the proxy: the connection drops.
    cut_at = time.monotonic()
    proxy.cut()

    answered.wait()
    assert write.status == 201, (write.status, write.error, system.logs())
    answered_again = f"as asset_added 3 of {mask_cpfs(cpf)} (a redelivery); answered with its first answer"
    wait_for(
        lambda: answered_again in system.log("person.1"),
        30,
        "the request, delivered again, to be answered",
        0.1,
        system.logs,
    )
    person_log = system.log("person.1")
    # The writes go to person in write_many requests (gateway/write_batches.py);
    # the ack of the write before may have been held in the proxy too.
    redelivered = re.findall(r"redelivered person\.write_many request", person_log)
    answered_again = person_log.count(answered_again)
    assert len(redelivered) in (1, 2) and answered_again == 1, person_log
    assert _rows(person_engine, [write]) == {write.number: [write.item_id]}

    snap, recovered = invariant.wait([before, write], cut_at)
    report(
        "11 reply lost after person's commit",
        deliveries_of_the_request=1 + len(redelivered),
        answered_from_the_stored_answer=answered_again,
        rows_stored=len(_rows(person_engine, [write])[write.number]),
        status=write.status,
        answered_after_cut_s=round(write.ended - cut_at, 2),
        recovery_s=round(recovered, 2),
        **lost_and_doubled(snap),
    )


@pytest.mark.parametrize(
    "requests_at_once",
    [
        # Each write a request of its own: two are handed to person, the rest
        # wait in its queue and expire there.
        pytest.param({"GATEWAY_WRITE_BATCHES": 12, "GATEWAY_WRITE_BATCH_SIZE": 1}, id="a request per write"),
        # The defaults: the writes go in one or two write_many requests (as
        # they arrive), both handed to person; the writes that waited in the
        # gateway for them are answered 504 unsent.
        pytest.param({}, id="write_many requests"),
    ],
)
def test_write_answered_5xx_never_runs_later(system, broker, invariant, person_engine, report, requests_at_once):
    # Person takes two requests at a time (its prefetch is its worker count):
    # while it is stalled, two wait in its socket and the rest in its queue.
    prefetch = 2
    system.start("person", MAX_WORKERS=prefetch)
    system.start("score")
    system.start("gateway", MAX_WORKERS=20, **requests_at_once)  # all the writes below at once
    system.wait_gateway(timeout=60)
    cpf = cpfs(1)[0]
    system.create_people([cpf])
    person = system.processes["person.1"]
    # Idle: the creation's request acked (Nameko acks once its worker is done),
    # so the whole prefetch window is free for the writes below.
    wait_for(lambda: broker.queue_depths(system.vhost).get(RPC_QUEUE) == 0, 30, "person to be idle", 0.1)

    writes = [Write(kind, cpf, system.url) for kind in ("income", "asset", "debt") * 4]
    shape = "a request per write" if requests_at_once else "write_many requests"
    expected = {prefetch} if requests_at_once else {1, prefetch}  # requests handed to person
    os.kill(person.pid, signal.SIGSTOP)
    try:
        pool = eventlet.GreenPool(len(writes))
        for write in writes:
            pool.spawn(write.send)
        pool.waitall()
        assert {w.status for w in writes} == {504}, [(w.status, w.error) for w in writes]
        # Still stalled: what waited in person's queue expires there; only
        # what the broker already handed to person is left (unacked).
        wait_for(
            lambda: broker.queue_depths(system.vhost).get(RPC_QUEUE) in expected,
            30,
            f"person's RPC queue to hold only the requests handed to person ({expected})",
            0.2,
            lambda: broker.queue_depths(system.vhost),
        )
        handed = broker.queue_depths(system.vhost).get(RPC_QUEUE)
    finally:
        os.kill(person.pid, signal.SIGCONT)
    resumed_at = time.monotonic()

    # Person resumed: the requests it holds are past their deadline and dropped.
    wait_for(
        lambda: broker.queue_depths(system.vhost).get(RPC_QUEUE) == 0,
        30,
        "person to settle the requests it held",
        0.2,
        system.logs,
    )
    # Person answers again, so whatever it had would have run by now.
    after = system.add_item(cpf, "debt").accepted()
    dropped = system.log("person.1").count("deadline passed")
    assert _rows(person_engine, writes) == {}, system.log("person.1")
    assert dropped == handed, system.log("person.1")

    snap, recovered = invariant.wait([*writes, after], resumed_at)
    report(
        f"12 writes answered 504 while person was stalled ({shape})",
        writes=len(writes),
        # write_many requests (gateway/write_batches.py): the rest expired
        # in the queue or waited in the gateway, never sent
        requests_dropped_by_person_past_deadline=dropped,
        stored=0,
        recovery_s=round(recovered, 2),
        **lost_and_doubled(snap),
    )


def test_writes_waiting_behind_a_request_out_answered_503_when_the_broker_goes(
    system, broker, invariant, person_engine, report
):
    """A request out keeps its slot until its deadline, whatever happens to the
    broker: until then it may still run, so its writes cannot be answered yet.
    The writes waiting in the gateway for that slot were never sent: when the
    broker goes, they are answered 503 then, and so is a write that comes while
    it is gone, instead of all waiting for the request out."""
    system.start("person")
    system.start("score")
    # One request out at a time: the next writes wait in the gateway for it.
    system.start("gateway", RPC_TIMEOUT=15, GATEWAY_WRITE_BATCHES=1)
    system.wait_gateway(timeout=60)
    cpf = cpfs(1)[0]
    system.create_people([cpf])
    wait_for(lambda: broker.queue_depths(system.vhost).get(RPC_QUEUE) == 0, 30, "person to be idle", 0.1)
    person = system.processes["person.1"]

    out, waiting, during = (Write(kind, cpf, system.url) for kind in ("income", "asset", "debt"))
    os.kill(person.pid, signal.SIGSTOP)
    try:
        sending = eventlet.spawn(out.send, 30)
        wait_for(
            lambda: broker.queue_depths(system.vhost).get(RPC_QUEUE) == 1,
            15,
            "the first write's request to reach person, stalled",
            0.1,
        )
        waiting_answered = eventlet.spawn(waiting.send, 30)
        eventlet.sleep(1)  # in the gateway, behind the request out
        broker.stop_app()
        waiting_answered.wait()
        during.send()
        sending.wait()
    finally:
        os.kill(person.pid, signal.SIGCONT)
    broker.start_app()

    assert (waiting.status, during.status) == (503, 503), [(w.status, w.error) for w in (waiting, during)]
    assert all('"SERVICE_UNAVAILABLE"' in w.error for w in (waiting, during)), (waiting.error, during.error)
    assert waiting.ended < out.ended, "the waiting write was answered after the request it waited behind"
    # The request out: answered at its deadline, and dropped by person past it.
    assert out.status == 504, (out.status, out.error)
    system.wait_gateway(timeout=60)
    after = system.add_item(cpf, "debt").accepted()
    assert _rows(person_engine, [out, waiting, during]) == {}, system.log("person.1")

    snap, recovered = invariant.wait([out, waiting, during, after], time.monotonic())
    report(
        "12b writes waiting behind a request out when the broker goes",
        request_out=out.status,
        waiting_write=waiting.status,
        waiting_answered_s=round(waiting.latency, 2),
        request_out_answered_s=round(out.latency, 2),
        write_while_broker_gone=during.status,
        stored=0,
        recovery_s=round(recovered, 2),
        **lost_and_doubled(snap),
    )


def test_person_not_running_answers_503_at_once(system, invariant, person_engine, report):
    system.start_all(timeout=60)
    cpf = cpfs(1)[0]
    system.create_people([cpf])
    system.stop("person.1")
    # The gateway trusts a consumer it saw in the last second; then it looks again.
    wait_for(
        lambda: system.health().json()["services"]["person"].get("status") == "unreachable",
        15,
        "the gateway to see person gone",
        0.1,
        system.logs,
    )
    write = Write("income", cpf, system.url).send()
    assert write.status == 503 and '"SERVICE_UNAVAILABLE"' in write.error, (write.status, write.error)
    # "at once": not after waiting for its deadline
    assert write.latency < RPC_TIMEOUT, f"took {write.latency:.2f}s"

    system.start("person", 2)
    system.wait_gateway(timeout=60)
    after = system.add_item(cpf, "asset").accepted()
    assert _rows(person_engine, [write]) == {}
    snap, recovered = invariant.wait([write, after], time.monotonic())
    health = requests.get(f"{system.url}/health", timeout=HTTP_TIMEOUT)
    assert health.status_code == 200, health.text
    report(
        "13 person not running",
        status=write.status,
        answered_in_s=round(write.latency, 3),
        stored=0,
        **lost_and_doubled(snap),
    )


def _gateway_queues(broker, vhost) -> set:
    return {name for name in broker.queue_names(vhost) if name.startswith(GATEWAY_QUEUE_PREFIXES)}


def test_gateway_takes_its_replies_and_notices_without_acks(system, broker):
    """The gateway's own queues live and die with its connection: what they
    hold is lost with it, acked or not, so their consumers take messages
    without acks (reliable_events/queues.py). The queues that outlive a
    connection (person's requests, score's events) are acked, each message
    once it is done with."""
    system.start_all(timeout=60)
    cpf = cpfs(1)[0]
    system.create_people([cpf])
    system.add_item(cpf, "income").accepted()

    consumers = broker.consumers_ack_required(system.vhost)
    own = {name: acks for name, acks in consumers.items() if name.startswith(GATEWAY_QUEUE_PREFIXES)}
    others = {name: acks for name, acks in consumers.items() if name not in own}
    assert len(own) == 2 and all(acks == [False] for acks in own.values()), consumers
    assert RPC_QUEUE in others and all(all(acks) for acks in others.values()), consumers


def test_gateway_queues_survive_a_late_cleanup_of_their_old_incarnation(system, broker, invariant, report):
    """The race a lost cluster node sets off, made to happen every time on one node.

    When a node is lost, each survivor deletes the transient queues that lived
    on it by name, some time after listing them (rabbitmq-server#6271). The
    gateway has meanwhile reconnected and declared its reply and notice
    queues again; under their old names, the cleanup would delete them under
    their consumer and no reply would reach the gateway again (every write
    504: the cluster test saw it once in CI). Here the connections drop, the
    gateway reconnects, and then the old names are deleted the way that
    cleanup does it (record and bindings, not the process)."""
    system.start_all(timeout=60)
    cpf = cpfs(1)[0]
    system.create_people([cpf])
    before = system.add_item(cpf, "income").accepted()
    vhost = system.vhost
    old = _gateway_queues(broker, vhost)
    assert len(old) == 2, old

    broker.close_connections(vhost)
    dropped_at = time.monotonic()
    writes = []

    def accepted():
        writes.append(system.add_item(cpf, "income"))
        return writes[-1].status == 201

    # Reconnected: the first writes may meet the publisher's dropped connection (503).
    wait_for(accepted, 30, "a write accepted after the reconnect", 0.2, lambda: f"{writes[-5:]}\n{system.logs()}")
    reconnected_after = time.monotonic() - dropped_at
    for name in old:
        broker.forget_queue(vhost, name)

    following = [system.add_item(cpf, kind) for kind in ("income", "asset", "debt")]
    assert [write.status for write in following] == [201, 201, 201], [(w.status, w.error) for w in following]
    current = _gateway_queues(broker, vhost)
    assert len(current) == 2 and current <= broker.bound_queues(vhost), (current, broker.bound_queues(vhost))
    snap, _ = invariant.wait([before, *writes, *following], time.monotonic())
    report(
        "13b the gateway's queues after a late cleanup of their old names",
        queues_before=sorted(old),
        queues_after=sorted(current),
        writes_until_one_accepted=len(writes),
        accepted_again_after_s=round(reconnected_after, 2),
        **lost_and_doubled(snap),
    )
