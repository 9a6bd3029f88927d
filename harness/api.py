"""Talking to the HTTP API in tests: request bodies, the error contract, waits."""

import requests
from sqlalchemy import text

from contracts.cpf import format_cpf
from harness.waits import wait_for

PERSON_TABLES = ("person", "income", "asset", "debt", "outbox")
HTTP_TIMEOUT = 15


def person_body(cpf="52998224725", **overrides):
    """A valid ``POST /person`` body."""
    return {"cpf": cpf, "name": "Ana", "address": "Rua A, 1", "date_of_birth": "1990-05-01", **overrides}


def create_person(api, cpf="52998224725", **overrides):
    response = requests.post(f"{api}/person", json=person_body(cpf, **overrides), timeout=HTTP_TIMEOUT)
    assert response.status_code == 201, response.text
    return response.json()


def table_counts(engine) -> dict:
    with engine.connect() as conn:
        return {table: conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one() for table in PERSON_TABLES}


NAMING = 'SELECT count(*) FROM "{table}" AS t WHERE strpos(t::text, :bare) > 0 OR strpos(t::text, :formatted) > 0'


def rows_naming(engine, cpf) -> dict:
    """``{table: rows}`` of every table of the database (from the catalog, so
    a table added later is searched too) with rows whose text holds ``cpf``,
    as 11 digits or formatted: where an erased person could be left."""
    found = {}
    with engine.connect() as conn:
        tables = conn.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")).scalars().all()
        for table in tables:
            count = conn.execute(
                text(NAMING.format(table=table)),
                {"bare": cpf, "formatted": format_cpf(cpf)},
            ).scalar_one()
            if count:
                found[table] = count
    return found


def assert_json_error(response, status, code=None):
    """The error contract: JSON, ``{"error", "message"[, "fields"]}``, no HTML, no traceback."""
    body_text = response.text
    assert response.status_code == status, body_text
    assert response.headers.get("Content-Type", "").split(";")[0].strip() == "application/json", response.headers
    lowered = body_text.lower()
    for leak in ("<html", "<!doctype", "traceback", 'file "/'):
        assert leak not in lowered, body_text
    body = response.json()
    assert isinstance(body, dict), body
    assert set(body) <= {"error", "message", "fields"}, body
    assert {"error", "message"} <= set(body), body
    assert isinstance(body["error"], str) and body["error"], body
    assert isinstance(body["message"], str) and body["message"].strip(), body
    if code is not None:
        assert body["error"] == code, body
    return body


def wait_for_score(api, cpf, expected, timeout=10):
    """Poll ``GET /<cpf>/score`` until its score is ``expected``; return the last answer."""
    last = []

    def scored():
        last[:] = [requests.get(f"{api}/{cpf}/score", timeout=HTTP_TIMEOUT)]
        return last[0].status_code == 200 and last[0].json()["score"] == expected

    try:
        wait_for(scored, timeout, f"the score of {cpf} to be {expected}")
    except AssertionError:
        pass  # the caller asserts on the answer
    return last[0]
