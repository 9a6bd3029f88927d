"""Backends that are down or hang: the gateway answers fast with a JSON 503/504.

Each scenario runs its own processes (not the shared ``system`` fixture), so
stopping a service here cannot disturb another module's tests:

- (a) the real three services; score is stopped and started again.
- (b) a gateway with ``RPC_TIMEOUT=1`` in a vhost of its own, where "person" is
  the stand-in of ``slow_person.py`` that sleeps 10 s in every business method.

No durations are asserted except generous upper bounds proving "did not hang".
"""

import re
import subprocess
import time
import uuid

import eventlet
import pytest
import requests

from harness.api import HTTP_TIMEOUT, assert_json_error, create_person, person_body, wait_for_score
from harness.processes import System, started
from harness.waits import wait_for

pytestmark = pytest.mark.e2e

CPF = "52998224725"
SCORE_DOWN_RPC_TIMEOUT = 3
SLOW_RPC_TIMEOUT = 1
SLOW_SECONDS = 10
SLOW_MAX_IN_FLIGHT = 2


def _rabbitmqctl(*args):
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


# --- (a) score is down ---------------------------------------------------------------


@pytest.fixture(scope="module")
def own_system(amqp_uri, db_uris, tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("failure-logs")
    with started(amqp_uri, db_uris, log_dir, RPC_TIMEOUT=SCORE_DOWN_RPC_TIMEOUT) as running:
        yield running


@pytest.fixture
def score_stopped(own_system, clean_databases):
    """A person known to score, then score stopped; score is started again afterwards."""
    create_person(own_system.url, CPF)
    assert wait_for_score(own_system.url, CPF, 0).status_code == 200
    own_system.stop("score.1")
    try:
        yield own_system
    finally:
        if "score.1" not in own_system.processes:
            own_system.start("score")
        own_system.wait_healthy(30)


def test_score_down_answers_503_quickly(score_stopped):
    started = time.monotonic()
    response = requests.get(f"{score_stopped.url}/{CPF}/score", timeout=HTTP_TIMEOUT)
    elapsed = time.monotonic() - started
    assert elapsed < SCORE_DOWN_RPC_TIMEOUT + 3, f"took {elapsed:.1f}s"  # did not hang
    assert_json_error(response, 503, "SERVICE_UNAVAILABLE")


def test_health_names_score_while_down_and_recovers(score_stopped):
    api = score_stopped.url
    started = time.monotonic()
    health = requests.get(f"{api}/health", timeout=HTTP_TIMEOUT)
    elapsed = time.monotonic() - started
    assert elapsed < 2 * SCORE_DOWN_RPC_TIMEOUT + 3, f"took {elapsed:.1f}s"
    assert health.status_code == 503, health.text
    assert health.headers["Content-Type"].startswith("application/json")
    body = health.json()
    assert body["status"] == "unavailable", body
    assert "error" in body["services"]["score"], body
    assert "error" not in body["services"]["person"], body
    assert body["broker"] == "ok", body

    # person keeps working while score is away; its event waits in score's queue
    other = "11144477735"
    created = requests.post(f"{api}/person", json=person_body(other), timeout=HTTP_TIMEOUT)
    assert created.status_code == 201, created.text

    score_stopped.start("score")
    score_stopped.wait_healthy(30)
    health = requests.get(f"{api}/health", timeout=HTTP_TIMEOUT)
    assert health.status_code == 200, health.text
    assert health.json()["status"] == "ok", health.text
    assert "error" not in health.json()["services"]["score"], health.text
    assert wait_for_score(api, CPF, 0).status_code == 200
    # the event published while score was down is applied once it is back
    late = wait_for_score(api, other, 0, timeout=15)
    assert late.status_code == 200, late.text
    assert late.json()["score"] == 0


# --- (b) person hangs ----------------------------------------------------------------


@pytest.fixture(scope="module")
def slow_system(amqp_uri, db_uris, tmp_path_factory):
    """A gateway (RPC_TIMEOUT=1) and the slow stand-in person, alone in a fresh vhost."""
    vhost = f"test-slow-{uuid.uuid4().hex[:8]}"
    _rabbitmqctl("add_vhost", vhost)
    _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    running = System(
        amqp_uri.rsplit("/", 1)[0] + "/" + vhost,
        db_uris,
        tmp_path_factory.mktemp("slow-logs"),
        RPC_TIMEOUT=SLOW_RPC_TIMEOUT,
        SLOW_PERSON_SECONDS=SLOW_SECONDS,
        MAX_IN_FLIGHT=SLOW_MAX_IN_FLIGHT,
    )
    try:
        running.start("person", module="tests.e2e.slow_person")
        running.start("gateway")
        # ready when the gateway answers and the stand-in consumes (its health is instant)
        running.wait_healthy(ready=lambda r: "error" not in r.json().get("services", {}).get("person", {"error": 1}))
        yield running
    finally:
        for name in list(running.processes):
            running.stop(name, timeout=3)
        _rabbitmqctl("delete_vhost", vhost)


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/person", person_body(CPF)),
        ("GET", f"/person/{CPF}", None),
        ("POST", f"/person/{CPF}/income", {"type": "renting", "value": 1000}),
        ("POST", f"/person/{CPF}/debt", {"value": 1000}),
    ],
)
def test_hanging_backend_gives_504_without_hanging(slow_system, method, path, body):
    started = time.monotonic()
    response = requests.request(method, slow_system.url + path, json=body, timeout=SLOW_SECONDS + 5)
    elapsed = time.monotonic() - started
    assert_json_error(response, 504, "GATEWAY_TIMEOUT")
    # well under the backend's 10 s: the gateway gave up at its own deadline
    assert elapsed < SLOW_RPC_TIMEOUT + 3, f"took {elapsed:.1f}s"


def test_gateway_stays_responsive_after_timeouts(slow_system):
    """Timed-out calls leave no stuck worker behind: later requests are still answered
    (validation errors at once, backend calls with 504 at their own deadline)."""
    for _ in range(3):
        response = requests.post(f"{slow_system.url}/person", json=person_body(CPF), timeout=SLOW_SECONDS + 5)
        assert_json_error(response, 504, "GATEWAY_TIMEOUT")
    bad = requests.get(f"{slow_system.url}/person/123", timeout=HTTP_TIMEOUT)
    assert_json_error(bad, 422, "INVALID_INPUT")
    health = requests.get(f"{slow_system.url}/health", timeout=HTTP_TIMEOUT)
    assert health.status_code == 503, health.text  # score is not running in this vhost
    assert "error" in health.json()["services"]["score"], health.text
    assert "error" not in health.json()["services"]["person"], health.text


def _in_flight(url):
    metrics = requests.get(f"{url}/metrics", timeout=HTTP_TIMEOUT).text
    return float(re.search(r"^http_requests_in_flight (\S+)$", metrics, re.M).group(1))


def test_overload_is_refused_at_once_not_queued(slow_system):
    """Past MAX_IN_FLIGHT requests in progress a request is answered 503 at once,
    with Retry-After, instead of waiting for a worker; /health still answers."""
    url = slow_system.url
    pool = eventlet.GreenPool()
    held = [
        pool.spawn(requests.post, f"{url}/person", json=person_body(CPF), timeout=SLOW_SECONDS + 5)
        for _ in range(SLOW_MAX_IN_FLIGHT)
    ]
    wait_for(lambda: _in_flight(url) == SLOW_MAX_IN_FLIGHT, 10, "the gateway to hold its limit of requests", 0.02)

    started = time.monotonic()
    refused = requests.post(f"{url}/person", json=person_body(CPF), timeout=HTTP_TIMEOUT)
    elapsed = time.monotonic() - started
    assert_json_error(refused, 503, "OVERLOADED")
    assert refused.headers["Retry-After"] == "1"
    assert elapsed < SLOW_RPC_TIMEOUT, f"took {elapsed:.2f}s: it waited"  # not queued behind the others
    # /health is answered, not refused: its own body (503 only because score is absent here)
    health = requests.get(f"{url}/health", timeout=HTTP_TIMEOUT)
    assert health.status_code == 503 and "error" not in health.json(), health.text
    assert health.json()["problems"] == ["score unreachable"], health.text
    assert requests.get(f"{url}/health/gateway", timeout=HTTP_TIMEOUT).status_code == 200  # Traefik's check too

    assert [gt.wait().status_code for gt in held] == [504] * SLOW_MAX_IN_FLIGHT
    # and with room again, the next request is taken (and times out against the slow person)
    assert_json_error(requests.post(f"{url}/person", json=person_body(CPF), timeout=HTTP_TIMEOUT), 504)
