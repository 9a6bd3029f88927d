"""Load balancing under faults: two gateways behind a real Traefik, one of them
killed, restarted, frozen, while writes go on through Traefik. The invariant
holds throughout: every 201 stored once and applied once, nothing invented, and
no POST sent twice by Traefik (a second try would store a write twice)."""

import json
import signal
import time

import pytest
import requests

from contracts.cpf import format_cpf
from harness.cpf import cpfs
from harness.faults import FaultSystem, Invariant, Load, lost_and_doubled, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.faults]

HEALTH_INTERVAL = 1


@pytest.fixture
def edge_system(broker, vhost_uri, db_uris, clean_databases, tmp_path):
    """Two gateways behind Traefik; the second's port stays its own across restarts."""
    running = FaultSystem(
        vhost_uri,
        db_uris,
        tmp_path / "logs",
        edge=True,
        gateways=2,
        RPC_TIMEOUT=2,
        EDGE_RESPONSE_TIMEOUT=4,
        EDGE_HEALTH_INTERVAL=HEALTH_INTERVAL,
    )
    try:
        yield running.start_all()
    finally:
        for name in running.processes:  # a frozen process would not stop
            running.processes[name].send_signal(signal.SIGCONT)
        running.stop_all()


@pytest.fixture
def edge_invariant(edge_system, person_engine, score_engine):
    return Invariant(person_engine, score_engine, edge_system)


def _json_error(write) -> dict:
    return json.loads(write.error)


def test_a_gateway_killed_then_restarted_under_writes(edge_system, edge_invariant, report):
    system = edge_system
    people = cpfs(6, start=31_000_000)
    system.create_people(people)
    load = Load([system.url], people, total=10**6, workers=6, pause=0.01).start()
    try:
        wait_for(lambda: load.accepted_count() >= 60, 60, "60 writes accepted", on_timeout=system.logs)
        killed_at = time.monotonic()
        system.processes["gateway.2"].send_signal(signal.SIGKILL)
        system.processes["gateway.2"].wait()
        dead_at = time.monotonic()

        def accepted_since(moment):
            return [w for w in load.writes if w.status == 201 and w.started >= moment]

        wait_for(lambda: len(accepted_since(killed_at)) >= 60, 30, "60 writes accepted after the kill")
        first_201 = min(w.ended for w in accepted_since(killed_at)) - killed_at
        # Back in: ready on its own port, then in Traefik's rotation within one check.
        system.start("gateway", 2)
        own_url = system.gateways["gateway.2"]
        ready = wait_for(
            lambda: requests.get(f"{own_url}/health/gateway", timeout=1).status_code == 200 and time.monotonic(),
            60,
            "the restarted gateway to be ready",
            interval=0.05,
        )
        in_rotation = wait_for(
            lambda: system.edge_servers_up().get(own_url) and time.monotonic(), 10, "Traefik to take it back", 0.05
        )
        requests_before = system.log("gateway.2").count('"POST /person/')
        wait_for(
            lambda: system.log("gateway.2").count('"POST /person/') > requests_before + 10,
            10,
            "the restarted gateway to take writes",
        )
    finally:
        load.stop()
        load.wait(60)

    not_201 = [w for w in load.writes if w.status != (422 if w.invalid else 201)]
    seen = [(w.status, round(w.started - killed_at, 3), round(w.ended - killed_at, 3), w.error) for w in not_201]
    # The only writes not accepted are those the killed gateway had in hand:
    # in flight when it died, or sent on one of its kept-alive connections in
    # the instant before Traefik saw that closed (such a POST may have reached
    # it, so Traefik never sends it again).
    assert all(w.ended >= killed_at and w.started <= dead_at + 0.1 for w in not_201), seen
    assert {w.status for w in not_201} <= {502}, seen
    for write in not_201:
        assert _json_error(write)["error"] == "BAD_GATEWAY"
    assert first_201 < 2, first_201
    assert in_rotation - ready <= HEALTH_INTERVAL + 1, in_rotation - ready
    # Traefik's log of all this (access lines, failed checks, lost connections) names no CPF.
    edge_log = system.log("edge.1")
    assert "Health check failed" in edge_log
    assert not [cpf for cpf in people if cpf in edge_log or format_cpf(cpf) in edge_log]
    snap, recovered = edge_invariant.wait(load.writes, killed_at, tolerate=(502,))
    report(
        "edge 1: one of two gateways killed, then restarted",
        statuses=load.statuses(),
        answered_not_201=len(not_201),
        first_201_after_kill_s=round(first_201, 2),
        back_in_rotation_after_ready_s=round(in_rotation - ready, 2),
        accepted=snap["accepted"],
        **lost_and_doubled(snap),
    )


def test_a_gateway_frozen_10_s_is_given_up_at_the_timeout(edge_system, edge_invariant, report):
    system = edge_system
    people = cpfs(6, start=32_000_000)
    system.create_people(people)
    victim = system.processes["gateway.2"]
    load = Load([system.url], people, total=10**6, workers=6, pause=0.01).start()
    try:
        wait_for(lambda: load.accepted_count() >= 60, 60, "60 writes accepted", on_timeout=system.logs)
        frozen_at = time.monotonic()
        victim.send_signal(signal.SIGSTOP)
        time.sleep(10)
        victim.send_signal(signal.SIGCONT)
        thawed_at = time.monotonic()
        wait_for(
            lambda: len([w for w in load.writes if w.status == 201 and w.started >= thawed_at]) >= 60,
            30,
            "60 writes accepted after the thaw",
        )
    finally:
        load.stop()
        load.wait(60)

    timed_out = [w for w in load.writes if w.status != (422 if w.invalid else 201)]
    assert timed_out, "no write was sent to the frozen gateway"
    assert {w.status for w in timed_out} == {504}, [vars(w) for w in timed_out][:5]
    for write in timed_out:
        assert _json_error(write)["error"] == "GATEWAY_TIMEOUT"
        assert 4 - 0.5 <= write.latency <= 4 + 1, write.latency  # EDGE_RESPONSE_TIMEOUT, not the freeze
        assert frozen_at - 0.5 <= write.started <= frozen_at + 2 * HEALTH_INTERVAL + 1, write.started - frozen_at
    during = [w for w in load.writes if w.status == 201 and frozen_at + 3 <= w.started <= thawed_at]
    assert during, "the other gateway took no write while one was frozen"
    snap, recovered = edge_invariant.wait(load.writes, thawed_at)
    not_run = system.log("gateway.2").count("the client left before it started; not run")
    report(
        "edge 2: one of two gateways frozen 10 s",
        statuses=load.statuses(),
        answered_504=len(timed_out),
        accepted_while_frozen=len(during),
        worst_504_latency_s=round(max(w.latency for w in timed_out), 2),
        writes_the_thawed_gateway_did_not_run=not_run,
        accepted=snap["accepted"],
        **lost_and_doubled(snap),
    )
