"""No single point of failure: the system on a three-node RabbitMQ cluster, with a
node killed, paused, restarted in turn, or two of them lost, under continuous
writes through the gateway.

The cluster is three private nodes on this machine (``harness.rabbit.RabbitCluster``:
ports, data and config of their own; the machine's node is never touched). The
services get every node in ``AMQP_URI`` and fail over to a survivor. Every
scenario ends with the suite's invariant (``harness.faults.Invariant``): each
write answered 201 stored once in person and applied once in score, nothing
doubled, nothing invented; and records how long writes failed.

Where the queues live: the event queues, their retry and dead-letter queues
and the ``rpc-<service>`` queues are quorum queues, replicated on every node
(a leader moves to a survivor); reply and notice queues are transient and are
declared again wherever their owner reconnects.
"""

import time

import pytest

from harness.cpf import cpfs
from harness.faults import INCOME_QUEUE, RPC_TIMEOUT, FaultSystem, Invariant, Load, lost_and_doubled, wait_for
from harness.rabbit import RabbitCluster

pytestmark = [pytest.mark.e2e, pytest.mark.faults, pytest.mark.cluster, pytest.mark.timeout(400)]

# The target for a node lost; asserted with a generous margin, reported exactly.
ANSWERED_AGAIN_BOUND = 5 + 10
PAUSE_SECONDS = 15
TWO_DOWN_SECONDS = 8


@pytest.fixture(scope="module")
def cluster():
    with RabbitCluster(prefix="cluster") as running:
        yield running


def make_whole(cluster) -> None:
    for node in cluster.nodes:
        cluster.resume(node)
        if node.pid is None:
            cluster.restart(node)
    cluster.wait_running(len(cluster.nodes))


@pytest.fixture
def nodes(cluster):
    """The cluster, every node running again after the test whatever happened."""
    yield cluster
    make_whole(cluster)


@pytest.fixture
def cluster_system(nodes, db_uris, clean_databases, tmp_path):
    vhost_uri = nodes.add_vhost()
    running = FaultSystem(vhost_uri, db_uris, tmp_path / "logs")
    try:
        yield running
    finally:
        running.stop_all()
        make_whole(nodes)  # a vhost's quorum queues are deleted on every member
        nodes.nodes[0].delete_vhost(running.vhost)


def start(system, cluster, score_on: int, others_on: int) -> None:
    """Score first (it declares the event queues, whose leaders start on its node), then person and gateway."""
    system.start("score", AMQP_URI=cluster.amqp_uri(system.vhost, first=score_on))
    for service in ("person", "gateway"):
        system.start(service, AMQP_URI=cluster.amqp_uri(system.vhost, first=others_on))
    system.wait_gateway(timeout=90)


def under_load(system, cluster, invariant, fault, restore, report, name, seen=None, **facts):
    """Writes run all along; ``fault()`` then ``restore()``; the invariant must hold.
    ``seen``: a list that gets every write, for a scenario's own checks."""
    people = cpfs(4)
    system.create_people(people)
    load = Load([system.url], people, total=100_000, workers=4, pause=0.05).start()
    try:
        wait_for(lambda: load.accepted_count() >= 20, 60, "20 writes accepted before the fault", on_timeout=system.logs)
        fault_at = time.monotonic()
        fault()

        def answered_after(moment):
            return [w for w in load.accepted if w.started >= moment]

        wait_for(
            lambda: answered_after(fault_at + 0.5),
            60,
            "a write accepted after the fault",
            0.1,
            lambda: f"statuses {load.statuses()}\n{cluster.queues(system.vhost)}\n{system.logs()}",
        )
        answered_again = min(w.ended for w in answered_after(fault_at + 0.5)) - fault_at
        restore()
        restored_at = time.monotonic()
        wait_for(
            lambda: len(answered_after(restored_at)) >= 20,
            90,
            "20 writes accepted after the cluster was whole again",
            0.2,
            lambda: f"statuses {load.statuses()}\n{cluster.queues(system.vhost)}\n{system.logs()}",
        )
    finally:
        load.stop()
        load.wait(60)
    if seen is not None:
        seen.extend(load.writes)
    failed = [w for w in load.writes if w.status != 201 and w.started >= fault_at]
    assert not load.unexpected(), [vars(w) for w in load.unexpected()][:5]
    snap, recovered = invariant.wait(load.writes, restored_at, timeout=120)
    report(
        name,
        writes=len(load.writes),
        statuses=load.statuses(),
        failed_after_fault=len(failed),
        writes_answered_again_after_s=round(answered_again, 2),
        recovery_after_restore_s=round(recovered, 2),
        **facts,
        **lost_and_doubled(snap),
    )
    return answered_again


@pytest.mark.parametrize("victim", ["services' node", "event queues' leader node"])
def test_node_killed(victim, cluster_system, nodes, person_engine, score_engine, report):
    """SIGKILL, then restart: the node person and the gateway are connected to
    (rpc-person's leader too), or the node holding the event queues' leaders
    (score's node)."""
    if victim == "services' node":
        start(cluster_system, nodes, score_on=1, others_on=0)
        node = nodes.nodes[0]
    else:
        start(cluster_system, nodes, score_on=2, others_on=0)
        node = nodes.queue_leader(cluster_system.vhost, INCOME_QUEUE)
        assert node is nodes.nodes[2], f"the leader is on {node.name}"
    invariant = Invariant(person_engine, score_engine, cluster_system)
    answered_again = under_load(
        cluster_system,
        nodes,
        invariant,
        lambda: nodes.kill(node),
        lambda: nodes.restart(node),
        report,
        f"cluster: the {victim} killed",
        killed=node.name,
    )
    assert answered_again < ANSWERED_AGAIN_BOUND


def test_connected_node_paused_then_resumed(cluster_system, nodes, person_engine, score_engine, report):
    """SIGSTOP the services' node (holding every queue's leader) for 15 s, then SIGCONT.

    A frozen node keeps its sockets open and answers nothing: the services'
    connections to it neither fail nor work. Writes meanwhile are answered
    503/504 within the RPC deadline (a client must never hang), and work
    again once the node resumes."""
    start(cluster_system, nodes, score_on=0, others_on=0)
    victim = nodes.nodes[0]
    invariant = Invariant(person_engine, score_engine, cluster_system)

    paused = {}

    def pause_then_resume():
        nodes.pause(victim)
        paused["from"] = time.monotonic()
        time.sleep(PAUSE_SECONDS)
        paused["until"] = time.monotonic()
        nodes.resume(victim)

    writes = []
    answered_again = under_load(
        cluster_system,
        nodes,
        invariant,
        pause_then_resume,
        lambda: None,
        report,
        "cluster: the services' node paused 15 s",
        seen=writes,
        paused=victim.name,
    )
    assert answered_again - PAUSE_SECONDS < ANSWERED_AGAIN_BOUND
    # Every write sent while the node was frozen was answered by its deadline
    # (RPC_TIMEOUT) plus 1 s, not when the node came back (a write's HTTP
    # timeout is as long as the pause: a hang would show).
    during = [w for w in writes if paused["from"] <= w.started <= paused["until"] - RPC_TIMEOUT - 1]
    assert during, "no write was sent during the pause"
    slow = [(w.status, round(w.latency, 2)) for w in during if w.latency > RPC_TIMEOUT + 1]
    assert not slow, slow


def test_rolling_restart(cluster_system, nodes, person_engine, score_engine, report):
    """Each node stopped cleanly and started again in turn, the next only once the cluster is whole."""
    start(cluster_system, nodes, score_on=1, others_on=0)
    invariant = Invariant(person_engine, score_engine, cluster_system)

    def roll():
        for node in nodes.nodes:
            nodes.stop_node(node)
            nodes.restart(node)
            nodes.wait_running(len(nodes.nodes))

    under_load(cluster_system, nodes, invariant, roll, lambda: None, report, "cluster: rolling restart")


def test_two_nodes_down_then_one_back(cluster_system, nodes, person_engine, score_engine, report):
    """Two of three nodes killed: the quorum queues (RPC and events) lose their
    majority. Writes are then refused (503/504 within the deadline), none is
    accepted, and everything converges once one node returns."""
    start(cluster_system, nodes, score_on=0, others_on=0)
    down = nodes.nodes[1:]
    invariant = Invariant(person_engine, score_engine, cluster_system)
    window = {}

    def two_down_then_one_back():
        for node in down:
            nodes.kill(node)
        window["from"] = time.monotonic()
        time.sleep(TWO_DOWN_SECONDS)
        window["until"] = time.monotonic()
        nodes.restart(down[0])

    writes = []
    answered_again = under_load(
        cluster_system,
        nodes,
        invariant,
        two_down_then_one_back,
        lambda: None,
        report,
        "cluster: two nodes down, then one back",
        killed=[node.name for node in down],
        seen=writes,
    )
    while_down = [w for w in writes if w.started >= window["from"] + 1 and w.ended <= window["until"]]
    assert while_down, "no write ran while two nodes were down"
    assert {w.status for w in while_down} <= {503, 504}, [vars(w) for w in while_down if w.status not in (503, 504)]
    assert answered_again < TWO_DOWN_SECONDS + 60  # the node's boot, and a generous margin
