"""Scoped bearer tokens over every route, with API_TOKENS set as an operator
would: a bare token (read and write) and one token per scope.

The matrix: each route of the gateway (``gateway.openapi.route_scopes``)
against no token, an unknown one, and each configured one; 401 or 403 come
before any backend is called (nothing is written, and a refused read of a
CPF nobody has is not 404), and a token with the scope gets through."""

import pytest
import requests
from sqlalchemy import text

from gateway.auth import Token
from gateway.openapi import route_scopes
from harness.api import HTTP_TIMEOUT, assert_json_error, person_body, table_counts
from harness.processes import started

pytestmark = pytest.mark.e2e

CPF = "52998224725"
TOKENS = {"bare": {"read", "write"}, "reader": {"read"}, "writer": {"write"}, "admin": {"admin"}}
API_TOKENS = "bare-token, reader-token:read, writer-token:write, admin-token:admin"


@pytest.fixture(scope="module")
def secured(amqp_uri, db_uris, tmp_path_factory):
    with started(amqp_uri, db_uris, tmp_path_factory.mktemp("auth-logs"), API_TOKENS=API_TOKENS) as running:
        yield running


@pytest.fixture
def api(secured, clean_databases):
    return secured.url


def bearer(name):
    return {"Authorization": f"Bearer {name}-token"}


def call(api, method, path, headers):
    url = api + path.replace("{cpf}", CPF).replace("{kind}", "income")
    body = {"POST": person_body(CPF) if path == "/person" else {"type": "salary", "value": 1000}}.get(method)
    return requests.request(method, url, json=body, headers=headers, timeout=HTTP_TIMEOUT)


SCOPED = sorted((route, scope) for route, scope in route_scopes().items() if scope)
OPEN = sorted(route for route, scope in route_scopes().items() if not scope)


@pytest.mark.parametrize("route, scope", SCOPED, ids=[f"{m} {p}" for (m, p), _ in SCOPED])
@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong-token"}, {"Authorization": "Bearer "}, {"Authorization": "Basic YTpi"}],
    ids=["none", "unknown", "empty", "basic"],
)
def test_a_scoped_route_without_a_known_token_is_401_before_any_backend(api, person_engine, route, scope, headers):
    before = table_counts(person_engine)
    response = call(api, *route, headers)
    assert_json_error(response, 401, "UNAUTHORIZED")
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert table_counts(person_engine) == before


@pytest.mark.parametrize("route, scope", SCOPED, ids=[f"{m} {p}" for (m, p), _ in SCOPED])
@pytest.mark.parametrize("token", sorted(TOKENS))
def test_a_known_token_gets_through_only_with_the_routes_scope(api, person_engine, route, scope, token):
    before = table_counts(person_engine)
    response = call(api, *route, bearer(token))
    if scope in TOKENS[token]:
        # Through to the backend: its own answer (no person yet: 404 for reads and items).
        assert response.status_code in (201, 404), response.text
    else:
        assert_json_error(response, 403, "FORBIDDEN")
        assert scope in response.json()["message"]
        assert table_counts(person_engine) == before


@pytest.mark.parametrize("route", OPEN, ids=[f"{m} {p}" for m, p in OPEN])
def test_health_metrics_and_the_document_stay_open(api, route):
    response = call(api, *route, {})
    assert response.status_code == 200, response.text


def test_the_seed_flow_with_a_bare_token_and_a_reader(api):
    created = requests.post(f"{api}/person", json=person_body(CPF), headers=bearer("bare"), timeout=HTTP_TIMEOUT)
    assert created.status_code == 201, created.text
    item = requests.post(f"{api}/person/{CPF}/debt", json={"value": 10}, headers=bearer("bare"), timeout=HTTP_TIMEOUT)
    assert item.status_code == 201, item.text
    person = requests.get(f"{api}/person/{CPF}", headers=bearer("reader"), timeout=HTTP_TIMEOUT)
    assert person.status_code == 200 and len(person.json()["debts"]) == 1, person.text
    score = requests.get(
        f"{api}/{CPF}/score", params={"min_sequence": 2}, headers=bearer("reader"), timeout=HTTP_TIMEOUT
    )
    assert score.status_code == 200 and score.json()["stale"] is False, score.text


def test_health_reveals_nothing_personal(api):
    requests.post(f"{api}/person", json=person_body(CPF), headers=bearer("bare"), timeout=HTTP_TIMEOUT)
    health = requests.get(f"{api}/health", timeout=HTTP_TIMEOUT)
    assert CPF not in health.text and person_body(CPF)["name"] not in health.text


def test_a_gateway_with_tokens_does_not_warn_that_it_is_open(secured):
    assert "API_TOKENS is empty" not in secured.log("gateway.1")


def test_an_erasure_is_audited_under_the_tokens_name_never_the_token(api, person_engine):
    requests.post(f"{api}/person", json=person_body(CPF), headers=bearer("bare"), timeout=HTTP_TIMEOUT)
    refused = requests.delete(f"{api}/person/{CPF}", headers=bearer("bare"), timeout=HTTP_TIMEOUT)
    assert_json_error(refused, 403, "FORBIDDEN")  # read and write do not include erasing

    erased = requests.delete(f"{api}/person/{CPF}", headers=bearer("admin"), timeout=HTTP_TIMEOUT)

    assert erased.status_code == 200, erased.text
    with person_engine.connect() as conn:
        [(erased_by, sequence)] = conn.execute(text("SELECT erased_by, sequence FROM erasure")).all()
    assert erased_by == Token(b"admin-token", frozenset()).name
    assert "admin-token" not in erased_by
    assert sequence == erased.json()["sequence"] == 2
