"""Broker outages: stopped mid-load and restarted; services started while it is down.

The outage is ``rabbitmqctl stop_app`` / ``start_app`` on the suite's private
node (the AMQP listener closes; the machine's shared broker is never touched).
"""

import time

import pytest
import requests
from sqlalchemy import text

from harness.cpf import cpfs
from harness.faults import (
    HTTP_TIMEOUT,
    RPC_TIMEOUT,
    Load,
    lost_and_doubled,
    person_body,
    wait_for,
)

pytestmark = [pytest.mark.e2e, pytest.mark.faults]

OUTAGE_SECONDS = 3
# "did not hang": a request during the outage is answered within its deadline
# plus a margin for process scheduling; the figure itself is reported.
HANG_BOUND = RPC_TIMEOUT + 5


def test_broker_stopped_mid_load_and_restarted(system, broker, invariant, person_engine, report):
    system.start_all(timeout=60)
    pids = {name: proc.pid for name, proc in system.processes.items()}
    people = cpfs(4)
    system.create_people(people)

    load = Load([system.url], people, total=1500, workers=4, pause=0.1).start()
    try:
        wait_for(lambda: load.accepted_count() >= 20, 60, "20 items accepted before the outage", on_timeout=system.logs)
        stop_started = time.monotonic()
        broker.stop_app()
        down_from = time.monotonic()
        health_while_down = requests.get(f"{system.url}/health", timeout=HTTP_TIMEOUT)
        time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - down_from)))
        up_from = time.monotonic()
        broker.start_app()
        fault_end = time.monotonic()

        def accepted_after():
            return [o for o in load.accepted if o.started >= fault_end]

        wait_for(
            lambda: len(accepted_after()) >= 20,
            45,
            "20 items accepted after the outage",
            0.2,
            lambda: f"statuses {load.statuses()}; first unexpected {load.unexpected()[:1]}\n{system.logs()}",
        )
    finally:
        load.stop()
        load.wait(60)
    first_accept = min(o.ended for o in accepted_after()) - fault_end

    assert not load.unexpected(), [vars(o) for o in load.unexpected()][:5]
    # /health said so while it lasted, naming the broker
    assert health_while_down.status_code == 503, health_while_down.text
    assert health_while_down.json()["broker"] == "unreachable", health_while_down.text
    during = [o for o in load.writes if o.started >= down_from and o.ended <= up_from]
    assert during, f"no request ran during the outage: {load.statuses()}"
    assert {o.status for o in during} <= {503, 504}, [vars(o) for o in during if o.status not in (503, 504)]
    in_outage = [o for o in load.writes if stop_started <= o.started < up_from]
    worst = max(o.latency for o in in_outage)
    assert worst < HANG_BOUND, f"a request during the outage took {worst:.1f}s"

    # every service reconnected by itself: same processes, healthy again
    system.assert_running()
    assert {name: proc.pid for name, proc in system.processes.items()} == pids
    system.wait_gateway(timeout=60)
    health_after = time.monotonic() - fault_end

    writes = load.writes
    snap, recovered = invariant.wait(writes, fault_end)
    with person_engine.connect() as conn:
        backlog = conn.execute(text("SELECT count(*) FROM outbox WHERE last_error IS NOT NULL")).scalar_one()
    report(
        "1 broker stopped mid-load",
        outage_seconds=round(up_from - down_from, 2),
        requests_during_outage=len(during),
        statuses=load.statuses(),
        worst_latency_during_outage_s=round(worst, 2),
        first_201_after_broker_back_s=round(first_accept, 2),
        health_200_after_broker_back_s=round(health_after, 2),
        outbox_rows_whose_publish_failed_then_drained=backlog,
        accepted=snap["accepted"],
        stored_items=snap["stored_items"],
        scored_items=snap["scored_items"],
        recovery_s=round(recovered, 2),
        **lost_and_doubled(snap),
    )


def test_services_started_while_broker_down(system, broker, invariant, report):
    broker.stop_app()
    for service in ("person", "score", "gateway"):
        system.start(service)
    time.sleep(5)
    system.assert_running()  # they wait for the broker instead of exiting
    health = requests.get(f"{system.url}/health", timeout=HTTP_TIMEOUT)
    status_while_down = health.status_code
    # The gateway answers while the broker is down, and names it
    assert (status_while_down, health.json()["broker"]) == (503, "unreachable"), health.text
    broker.start_app()
    fault_end = time.monotonic()
    system.wait_gateway(timeout=45)
    healthy_after = time.monotonic() - fault_end

    cpf = "52998224725"
    response = requests.post(f"{system.url}/person", json=person_body(cpf), timeout=HTTP_TIMEOUT)
    assert response.status_code == 201, response.text
    writes = [
        system.add_item(cpf, "income", "1000.00").accepted(),
        system.add_item(cpf, "asset", "100000.00").accepted(),
        system.add_item(cpf, "debt", "1000.00").accepted(),
    ]
    snap, recovered = invariant.wait(writes, fault_end)
    score = requests.get(f"{system.url}/{cpf}/score", timeout=HTTP_TIMEOUT).json()
    assert score["score"] == 4970, score
    report(
        "10 started while broker down",
        health_while_broker_down=status_while_down,
        health_200_after_broker_up_s=round(healthy_after, 2),
        seed_score=score["score"],
        recovery_s=round(recovered, 2),
        **lost_and_doubled(snap),
    )
