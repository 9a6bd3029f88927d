"""A read waiting for its write while the gateway's connection to the broker drops.

The read (``GET /<cpf>/score?min_sequence=n``) waits in the gateway for score's
notice that the person's replica advanced, on a queue of the gateway's
connection (gateway/freshness.py). Here score applies the write, and sends
the notice, while the gateway is cut off from the broker: the notice reaches
nobody. Once the gateway is back on a new connection, the read must read
again at once, not wait out its bound (``READ_YOUR_WRITES_TIMEOUT``, two
minutes here) and answer only then.

Two proxies (harness/proxy.py) set the order: person's outbox relay is cut off
until the read waits, so score cannot apply the write before; the gateway's
connections are cut while score applies it.
"""

import threading
import time

import pytest
import requests
from sqlalchemy import text

from harness.cpf import cpfs
from harness.faults import HTTP_TIMEOUT, wait_for
from harness.proxy import Partition, RelayPartition
from harness.workers import TEST_HASHER

pytestmark = [pytest.mark.e2e, pytest.mark.faults]

BOUND = 120  # READ_YOUR_WRITES_TIMEOUT, seconds
BACK_WITHIN = 45  # seconds the read may take once the gateway can reach the broker again


def _waiting_reads(score_engine, cpf) -> int:
    with score_engine.connect() as conn:
        return conn.execute(
            text("SELECT count(*) FROM waiting_read WHERE cpf_hash = :h AND until > now()"),
            {"h": TEST_HASHER.hash(cpf)},
        ).scalar_one()


def _applied_through(score_engine, cpf) -> int:
    with score_engine.connect() as conn:
        return conn.execute(
            text("SELECT coalesce(max(applied_through), 0) FROM known_person WHERE cpf = :cpf"), {"cpf": cpf}
        ).scalar_one()


def test_a_read_waiting_through_a_reconnect_reads_again_once_the_gateway_is_back(system, broker, score_engine, report):
    with RelayPartition("127.0.0.1", broker.port) as relay, Partition("127.0.0.1", broker.port) as gateway_link:
        system.env["READ_YOUR_WRITES_TIMEOUT"] = str(BOUND)  # score keeps the wait as long
        system.start("person", AMQP_URI=relay.uri(system.env["AMQP_URI"]))
        system.start("score")
        system.start("gateway", AMQP_URI=gateway_link.uri(system.env["AMQP_URI"]))
        system.wait_gateway(timeout=60)
        cpf = cpfs(1, start=515151515)[0]
        system.create_people([cpf])
        wait_for(lambda: _applied_through(score_engine, cpf) >= 1, 30, "score to know the person", 0.1, system.logs)

        # --- the write's event held in person's outbox; a read waits for it ----------------
        relay.partitioned = True
        written = requests.post(
            f"{system.url}/person/{cpf}/income", json={"type": "salary", "value": "1000.00"}, timeout=HTTP_TIMEOUT
        )
        assert written.status_code == 201, written.text
        sequence = written.json()["sequence"]
        answers = []

        def read():
            answers.append(
                requests.get(f"{system.url}/{cpf}/score", params={"min_sequence": sequence}, timeout=BOUND + 30)
            )

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        wait_for(lambda: _waiting_reads(score_engine, cpf) == 1, 30, "the read to wait", 0.1, system.logs)
        assert not answers, answers

        # --- the gateway cut off; score applies the write and announces it to nobody ------
        gateway_link.partitioned = True
        assert gateway_link.cut() > 0
        relay.partitioned = False
        wait_for(
            lambda: _applied_through(score_engine, cpf) >= sequence, 30, "score to apply the write", 0.1, system.logs
        )
        assert not answers, answers  # its wake-up went to a queue that is gone

        # --- the gateway reaches the broker again ---------------------------------------------
        gateway_link.partitioned = False
        back_at = time.monotonic()
        reader.join(timeout=BACK_WITHIN)
        assert answers, f"the read still waits {BACK_WITHIN}s after the gateway could reconnect\n{system.logs()}"
        answered_after = time.monotonic() - back_at
        response = answers[0]
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["stale"], body["applied_sequence"]) == (False, sequence), body
        report(
            "a read waiting through the gateway's reconnect",
            gateway_connections_refused=gateway_link.refused,
            read_answered_after_reconnect_allowed_s=round(answered_after, 2),
            read_bound_s=BOUND,
        )
