"""Structured logs that follow one write across the services, and each service's /metrics."""

import json
import time

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from contracts.cpf import format_cpf, mask_cpfs
from harness.api import HTTP_TIMEOUT, create_person, person_body
from harness.cpf import cpfs

pytestmark = pytest.mark.e2e


def records(system, name):
    """Every line of a service's log as JSON (any line that is not JSON fails the test)."""
    lines = [line for line in system.log(name).splitlines() if line.strip()]
    return [json.loads(line) for line in lines]


def wait_for_record(system, name, predicate, timeout=10):
    deadline = time.monotonic() + timeout
    while True:
        found = [r for r in records(system, name) if predicate(r)]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def samples(text):
    """``{(name, frozenset(labels)): value}`` from Prometheus' text format."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def metrics_url(system, service):
    """The address a service logged for its metrics server (it picked a free port)."""
    (line,) = wait_for_record(system, f"{service}.1", lambda r: "metrics_port" in r)
    return f"http://127.0.0.1:{line['metrics_port']}/metrics"


def test_one_write_is_followed_across_the_three_services_by_its_call_id(system, api):
    cpf = create_person(api)["cpf"]
    written = requests.post(f"{api}/person/{cpf}/income", json={"type": "salary", "value": 100}, timeout=HTTP_TIMEOUT)
    assert written.status_code == 201

    (created,) = wait_for_record(system, "gateway.1", lambda r: r.get("route") == "/person")
    masked = mask_cpfs(cpf)  # no log line holds a whole CPF
    assert (created["cpf"], created["sequence"], created["status"]) == (masked, 1, 201)
    (request,) = wait_for_record(
        system, "gateway.1", lambda r: r.get("route") == "/person/<cpf>/<any(income, asset, debt):kind>"
    )
    assert request["status"] == 201 and request["cpf"] == masked and request["method"] == "POST"
    assert request["sequence"] == 2  # with the CPF, it names the event in person's and score's lines
    assert request["level"] == "INFO" and request["duration_ms"] > 0 and request["timestamp"].endswith("+00:00")
    origin = request["call_id"]
    assert origin.startswith("gateway.add_item.") and request["call_id_stack"] == [origin]

    (rpc,) = wait_for_record(system, "person.1", lambda r: r.get("rpc_method") == "add_income")
    assert rpc["call_id_stack"][0] == origin and rpc["outcome"] == "ok"

    (published,) = wait_for_record(
        system, "person.1", lambda r: r.get("event_type") == "income_added" and "published" in r["message"]
    )
    assert published["call_id_stack"][0] == origin
    assert (published["cpf"], published["sequence"]) == (masked, 2)
    event_id = published["event_id"]

    (applied,) = wait_for_record(system, "score.1", lambda r: r.get("event_id") == event_id)
    assert "applied event" in applied["message"]
    assert applied["call_id_stack"][0] == origin and applied["call_id"].startswith("score.on_income_added.")
    assert (applied["cpf"], applied["sequence"], applied["event_type"]) == (masked, 2, "income_added")
    assert applied["lag_ms"] >= 0


def test_each_service_serves_its_metrics(system, api):
    cpf = create_person(api)["cpf"]
    for kind, body in (("income", {"type": "a", "value": 100}), ("debt", {"value": 10})):
        assert requests.post(f"{api}/person/{cpf}/{kind}", json=body, timeout=HTTP_TIMEOUT).status_code == 201
    fresh = requests.get(f"{api}/{cpf}/score", params={"min_sequence": 3}, timeout=HTTP_TIMEOUT)
    assert fresh.json()["stale"] is False
    assert requests.get(f"{api}/person/00000000191", timeout=HTTP_TIMEOUT).status_code == 404

    # On the gateway's own port: Traefik does not route /metrics (404 there).
    assert requests.get(f"{api}/metrics", timeout=HTTP_TIMEOUT).status_code == 404
    gateway = requests.get(f"{system.gateways['gateway.1']}/metrics", timeout=HTTP_TIMEOUT)
    assert gateway.status_code == 200 and gateway.headers["Content-Type"].startswith("text/plain")
    got = samples(gateway.text)
    assert got[("http_requests_total", frozenset({"method": "POST", "route": "/person", "status": "201"}.items()))] >= 1
    assert got[("http_requests_total", frozenset({"method": "GET", "route": "/person/<cpf>", "status": "404"}.items()))]
    assert got[("http_request_duration_seconds_count", frozenset({"method": "POST", "route": "/person"}.items()))] >= 1
    assert got[("read_your_writes_wait_seconds_count", frozenset({"outcome": "fresh"}.items()))] >= 1

    person = samples(requests.get(metrics_url(system, "person"), timeout=HTTP_TIMEOUT).text)
    published = sum(v for (name, _), v in person.items() if name == "events_published_total")
    assert published >= 3
    assert person[("outbox_pending_events", frozenset())] >= 0
    assert ("outbox_oldest_pending_age_seconds", frozenset()) in person
    assert person[("rpc_requests_total", frozenset({"method": "add_debt", "outcome": "ok"}.items()))] >= 1
    assert person[("rpc_requests_total", frozenset({"method": "get_person", "outcome": "client_error"}.items()))] >= 1

    score = samples(requests.get(metrics_url(system, "score"), timeout=HTTP_TIMEOUT).text)
    assert score[("events_applied_total", frozenset({"event_type": "debt_added"}.items()))] >= 1
    lag = score[("event_propagation_lag_seconds_count", frozenset({"event_type": "income_added"}.items()))]
    assert lag >= 1
    dead = [v for (name, labels), v in score.items() if name == "dead_letters"]
    assert dead and all(v == 0 for v in dead)


def test_a_gateway_without_tokens_says_once_that_every_route_is_open(system):
    lines = [line for line in system.log("gateway.1").splitlines() if "API_TOKENS is empty" in line]
    assert len(lines) == 1 and '"level": "WARNING"' in lines[0], lines


def test_no_service_logs_a_whole_cpf(system, api):
    """Every route, answered and refused, for CPFs of this test's own; then no
    line of any service holds one of them, bare or punctuated."""
    known, unknown = cpfs(2, start=900)
    assert requests.post(f"{api}/person", json=person_body(format_cpf(known)), timeout=HTTP_TIMEOUT).status_code == 201
    answers = [
        requests.post(f"{api}/person", json=person_body(known), timeout=HTTP_TIMEOUT),  # 409
        requests.post(f"{api}/person/{known}/income", json={"type": "a", "value": 5}, timeout=HTTP_TIMEOUT),
        requests.post(f"{api}/person/{format_cpf(known)}/debt", json={"value": "x"}, timeout=HTTP_TIMEOUT),  # 422
        requests.post(f"{api}/person/{unknown}/asset", json={"type": "a", "value": 5}, timeout=HTTP_TIMEOUT),  # 404
        requests.get(f"{api}/person/{known}", timeout=HTTP_TIMEOUT),
        requests.get(f"{api}/person/{unknown}", timeout=HTTP_TIMEOUT),  # 404
        requests.get(f"{api}/{known}/score", params={"min_sequence": 2}, timeout=HTTP_TIMEOUT),
        requests.get(f"{api}/{unknown}/score", params={"min_sequence": 1}, timeout=HTTP_TIMEOUT),  # 404
    ]
    assert [a.status_code for a in answers] == [409, 201, 422, 404, 200, 404, 200, 404], [a.text for a in answers]
    services = ("gateway.1", "person.1", "score.1")
    wait_for_record(system, "score.1", lambda r: r.get("cpf") == mask_cpfs(known) and r.get("sequence") == 2)
    for name in services:
        log = system.log(name)
        for cpf in (known, unknown):
            assert cpf not in log and format_cpf(cpf) not in log, f"{name} logged {cpf}"
        assert mask_cpfs(known) in log, f"{name} has no line of {known}'s writes"
