"""The edge, through a real Traefik in front of a real gateway (gateway/edge.py):
its limits answer in JSON, bad input stops there or gets the gateway's JSON
4xx, nothing is stored, no gateway worker is held, and its access log holds no
CPF. Limits here are config.yml's, made small so that one client reaches them."""

import concurrent.futures
import http.client
import json
import re
import signal
import socket
import time

import pytest
import requests

from contracts.cpf import format_cpf
from harness.api import HTTP_TIMEOUT, create_person, table_counts
from harness.cpf import cpfs
from harness.processes import started
from harness.waits import wait_for

LIMITS = {
    "EDGE_RATE_LIMIT": "50",
    "EDGE_RATE_BURST": "50",
    "EDGE_CLIENT_IN_FLIGHT": "4",
    "EDGE_READ_TIMEOUT": "2",
    "READ_YOUR_WRITES_TIMEOUT": "1.5",
}


@pytest.fixture(scope="module")
def system(amqp_uri, db_uris, tmp_path_factory):
    with started(amqp_uri, db_uris, tmp_path_factory.mktemp("edge-logs"), edge=True, **LIMITS) as running:
        yield running


@pytest.fixture
def api(system, clean_databases):
    """Traefik's URL, once this client is within its rate again."""
    wait_for(
        lambda: requests.get(f"{system.url}/health", timeout=HTTP_TIMEOUT).status_code != 429,
        10,
        "the rate limit to let this client in",
        interval=0.5,
    )
    return system.url


def raw_request(url, method, path, headers=None, body=b"") -> tuple[int, dict, bytes]:
    """One request with the path sent exactly as written (no client normalises it)."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=HTTP_TIMEOUT)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        if body:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body or None)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def assert_json_error(status, headers, body, expected_status, code=None):
    assert status == expected_status, (status, body[:300])
    assert headers.get("Content-Type", "").startswith("application/json"), headers
    answer = json.loads(body)
    assert set(answer) >= {"error", "message"}, answer
    if code:
        assert answer["error"] == code, answer
    return answer


def gateway_lines(system) -> list:
    """The gateway's log lines of requests to ``/person`` (not the error pages
    Traefik asks it for, nor this test's reads of its metrics)."""
    return [line for line in system.log("gateway.1").splitlines() if '"route": "/person"' in line]


def gateway_in_flight(system) -> float:
    metrics = requests.get(f"{system.gateways['gateway.1']}/metrics", timeout=HTTP_TIMEOUT).text
    return float(re.search(r"^http_requests_in_flight (\S+)$", metrics, re.M).group(1))


def test_a_body_over_the_cap_is_refused_at_the_edge_in_json(system, api, person_engine):
    before = len(gateway_lines(system))
    response = requests.post(
        f"{api}/person", data=b"{" + b" " * 5_000_000, headers={"Content-Type": "application/json"}, timeout=30
    )
    assert_json_error(response.status_code, response.headers, response.content, 413, "BODY_TOO_LARGE")
    assert len(gateway_lines(system)) == before  # no gateway read it
    assert set(table_counts(person_engine).values()) == {0}


def test_a_client_over_its_rate_gets_429_in_json_with_retry_after(system, api):
    # 1,000 requests in about a second from one address, 50 a second allowed.
    def burst(_):
        session = requests.Session()
        return [session.get(f"{api}/person/1", timeout=HTTP_TIMEOUT) for _ in range(50)]

    started_at = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        answers = [r for batch in pool.map(burst, range(20)) for r in batch]
    elapsed = time.monotonic() - started_at
    refused = [r for r in answers if r.status_code == 429]
    passed = [r for r in answers if r.status_code != 429]
    # Those let through are the gateway's own answer to a malformed CPF.
    assert {r.status_code for r in passed} == {422}
    assert len(passed) <= 50 + 50 * elapsed + 5, (len(passed), elapsed)
    assert len(refused) >= 1000 - (50 + 50 * elapsed + 5)
    for response in refused:
        assert_json_error(response.status_code, response.headers, response.content, 429, "TOO_MANY_REQUESTS")
        assert int(response.headers["Retry-After"]) >= 1


def test_a_client_over_its_requests_in_progress_gets_429(system, api):
    # Reads that wait for a sequence never written: each holds its place 1.5 s.
    unknown = cpfs(1, start=987654)[0]

    def read(_):
        return requests.get(f"{api}/{unknown}/score?min_sequence=9", timeout=HTTP_TIMEOUT)

    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(read, range(10)))
    statuses = sorted(r.status_code for r in answers)
    assert statuses.count(404) == 4 and statuses.count(429) == 6, statuses
    for response in answers:
        if response.status_code == 429:
            assert_json_error(response.status_code, response.headers, response.content, 429, "TOO_MANY_REQUESTS")


def test_a_client_sending_one_byte_a_second_is_cut_off_and_holds_no_gateway(system, api, person_engine):
    host, port = api.removeprefix("http://").split(":")
    before = len(gateway_lines(system))
    sock = socket.create_connection((host, int(port)), timeout=HTTP_TIMEOUT)
    sock.sendall(b"POST /person HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n")
    started_at = time.monotonic()
    cut_off = None
    try:
        for _ in range(15):
            sock.sendall(b" ")
            assert gateway_in_flight(system) == 0  # Traefik holds the body, not a gateway worker
            time.sleep(1)
    except OSError:
        cut_off = time.monotonic() - started_at
    finally:
        sock.close()
    assert cut_off is not None and cut_off < 2 + 3, cut_off  # EDGE_READ_TIMEOUT, plus the socket noticing
    assert len(gateway_lines(system)) == before
    assert set(table_counts(person_engine).values()) == {0}


def test_a_20_kb_header_gets_the_gateways_json_431_and_a_huge_one_traefiks_431(system, api, person_engine):
    body = json.dumps({"cpf": "52998224725", "name": "Ana", "address": "Rua A", "date_of_birth": "1990-05-01"})
    headers = {"Content-Type": "application/json", "X-Padding": "a" * 20_000}
    status, answer_headers, answer = raw_request(api, "POST", "/person", headers, body.encode())
    assert_json_error(status, answer_headers, answer, 431, "HEADERS_TOO_LARGE")
    # Past 4 x MAX_HEADER_BYTES Traefik refuses by itself, in plain text: the
    # one answer here that is not JSON (README, "The edge").
    headers["X-Padding"] = "a" * 200_000
    status, _, _ = raw_request(api, "POST", "/person", headers, body.encode())
    assert status == 431
    assert set(table_counts(person_engine).values()) == {0}


@pytest.mark.parametrize(
    "method, path, expected",
    [
        ("GET", "/person/../metrics", 404),  # cleaned to /metrics, which is not routed
        ("GET", "/person/..%2F..%2Fmetrics", 404),
        ("GET", "/%2e%2e/metrics", 404),
        ("GET", "/metrics", 404),
        ("GET", "/errors/429", 404),
        ("GET", "/health/gateway", 404),
        ("GET", "/person/%00", 422),
        ("POST", "/person/%00/income", 422),
        ("POST", "/person/52998224725%00/debt", 422),
        ("GET", "/nothing/here", 404),
        ("PUT", "/person", 405),
    ],
)
def test_odd_paths_get_a_json_4xx_and_store_nothing(system, api, person_engine, method, path, expected):
    body = b'{"value": 1}' if method in ("POST", "PUT") else b""
    status, headers, answer = raw_request(api, method, path, {"Content-Type": "application/json"}, body)
    assert_json_error(status, headers, answer, expected)
    assert set(table_counts(person_engine).values()) == {0}


def test_the_access_log_is_json_lines_with_no_cpf(system, api):
    cpf = cpfs(1, start=4567891)[0]
    create_person(api, cpf)
    for kind, item in (("income", {"type": "salary", "value": 10}), ("debt", {"value": 5})):
        assert requests.post(f"{api}/person/{format_cpf(cpf)}/{kind}", json=item, timeout=HTTP_TIMEOUT).ok
    assert requests.get(f"{api}/{cpf}/score", timeout=HTTP_TIMEOUT).status_code in (200, 404)

    def access_lines():
        records = [json.loads(line) for line in system.log("edge.1").splitlines() if line.startswith("{")]
        return [r for r in records if r.get("RouterName", "").startswith(("person-cpf-kind", "cpf-score"))]

    lines = wait_for(lambda: len(access_lines()) >= 3 and access_lines(), 10, "the access log lines")
    for record in lines:
        assert "RequestPath" not in record and "DownstreamStatus" in record, record
    text = system.log("edge.1")
    assert cpf not in text and format_cpf(cpf) not in text


def test_a_write_whose_client_left_while_the_gateway_was_frozen_is_not_run(system, api, person_engine):
    # What Traefik does to a frozen gateway: sends it a write, gives up at its
    # timeout (504) and closes the connection. The gateway, running again,
    # reads the write only then, and must not run it.
    cpf = cpfs(1, start=5678912)[0]
    gateway = system.processes["gateway.1"]
    host, port = system.gateways["gateway.1"].removeprefix("http://").split(":")
    body = json.dumps({"cpf": cpf, "name": "Ana", "address": "Rua A, 1", "date_of_birth": "1990-05-01"}).encode()
    gateway.send_signal(signal.SIGSTOP)
    try:
        with socket.create_connection((host, int(port)), timeout=HTTP_TIMEOUT) as sock:
            sock.sendall(
                b"POST /person HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
    finally:
        gateway.send_signal(signal.SIGCONT)
    wait_for(
        lambda: "the client left before it started; not run" in system.log("gateway.1"), 10, "the gateway to drop it"
    )
    assert requests.get(f"{api}/person/{cpf}", timeout=HTTP_TIMEOUT).status_code == 404
    assert set(table_counts(person_engine).values()) == {0}
