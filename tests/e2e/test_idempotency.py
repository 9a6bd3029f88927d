"""Safe client retries with ``Idempotency-Key``, over HTTP on real processes."""

import eventlet
import pytest
import requests
from nameko.standalone.rpc import ClusterRpcProxy
from sqlalchemy import text

from harness.api import HTTP_TIMEOUT, assert_json_error, create_person, person_body, table_counts
from harness.waits import wait_for

pytestmark = pytest.mark.e2e

CPF = "52998224725"


def post(api, path, body, key):
    return requests.post(f"{api}{path}", json=body, headers={"Idempotency-Key": key}, timeout=HTTP_TIMEOUT)


def test_a_retried_create_returns_the_first_answer_and_creates_nothing(api, person_engine):
    first = post(api, "/person", person_body(CPF), "create-1")
    before = table_counts(person_engine)
    again = post(api, "/person", person_body(CPF), "create-1")

    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert again.headers["Location"] == first.headers["Location"]
    assert table_counts(person_engine) == before  # no 409, no second row, no second event


@pytest.mark.parametrize("kind, body", [("income", {"type": "renting", "value": 1000}), ("debt", {"value": 5})])
def test_a_retried_item_is_added_once(api, person_engine, kind, body):
    create_person(api, CPF)
    responses = [post(api, f"/person/{CPF}/{kind}", body, f"{kind}-1") for _ in range(3)]

    assert {r.status_code for r in responses} == {201}
    assert len({r.json()["id"] for r in responses}) == 1
    with person_engine.connect() as conn:
        assert conn.execute(text(f"SELECT count(*) FROM {kind}")).scalar() == 1
        events = conn.execute(text("SELECT count(*) FROM outbox WHERE event_type = :t"), {"t": f"{kind}_added"})
        assert events.scalar() == 1


def test_the_same_key_with_another_body_is_422(api, person_engine):
    create_person(api, CPF)
    assert post(api, f"/person/{CPF}/income", {"type": "a", "value": 1}, "k").status_code == 201
    before = table_counts(person_engine)

    response = post(api, f"/person/{CPF}/income", {"type": "a", "value": 2}, "k")

    assert_json_error(response, 422, "IDEMPOTENCY_KEY_REUSED")
    assert table_counts(person_engine) == before


def test_a_failed_request_does_not_keep_its_key(api, person_engine):
    """A 404 wrote nothing, so the same key works once the person exists."""
    body = {"type": "a", "value": 1}
    assert_json_error(post(api, f"/person/{CPF}/income", body, "k2"), 404, "PERSON_NOT_FOUND")
    create_person(api, CPF)
    assert post(api, f"/person/{CPF}/income", body, "k2").status_code == 201


def test_concurrent_retries_with_one_key_create_one_item(api, person_engine):
    create_person(api, CPF)
    pool = eventlet.GreenPool(10)
    responses = list(
        pool.imap(lambda _: post(api, f"/person/{CPF}/asset", {"type": "car", "value": 30000}, "race"), range(10))
    )

    assert {r.status_code for r in responses} == {201}
    assert len({r.json()["id"] for r in responses}) == 1
    with person_engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM asset")).scalar() == 1


@pytest.mark.parametrize("key", ["", "x" * 201, "caf\u00e9"])
def test_a_malformed_key_is_422(api, key):
    response = requests.post(
        f"{api}/person", json=person_body(CPF), headers={"Idempotency-Key": key}, timeout=HTTP_TIMEOUT
    )
    body = assert_json_error(response, 422, "INVALID_INPUT")
    assert "Idempotency-Key" in body["fields"]


def vacuums(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(
            text("SELECT vacuum_count FROM pg_stat_user_tables WHERE relname = 'idempotency_keys'")
        ).scalar()


def test_expired_keys_are_purged(api, person_engine, system):
    """Keys older than IDEMPOTENCY_KEY_TTL go; younger ones stay. Where the
    server's autovacuum is off (this machine's), the table is vacuumed after,
    or the purged rows' space would never be reused."""
    create_person(api, CPF)
    post(api, f"/person/{CPF}/debt", {"value": 1}, "old")
    post(api, f"/person/{CPF}/debt", {"value": 2}, "new")
    with person_engine.begin() as conn:
        conn.execute(text("UPDATE idempotency_keys SET created_at = now() - interval '2 days' WHERE key = 'old'"))
        autovacuum = conn.execute(text("SHOW autovacuum")).scalar()
    before = vacuums(person_engine)

    with ClusterRpcProxy({"AMQP_URI": system.env["AMQP_URI"]}, timeout=10) as rpc:
        assert rpc.person.purge_idempotency_keys() == 1
    with person_engine.connect() as conn:
        kept = conn.execute(text("SELECT key FROM idempotency_keys WHERE key IN ('old', 'new')")).scalars().all()
    assert kept == ["new"]
    if autovacuum == "off":  # the statistics collector reports a little later
        wait_for(lambda: vacuums(person_engine) > before, 10, "idempotency_keys vacuumed")


def test_a_key_past_its_ttl_is_forgotten_and_a_retry_with_it_writes_again(api, person_engine, amqp_uri):
    create_person(api, CPF)
    body = {"type": "renting", "value": 1000}
    first = post(api, f"/person/{CPF}/income", body, "old-key")
    assert post(api, f"/person/{CPF}/income", body, "old-key").json()["id"] == first.json()["id"]  # within the TTL
    with person_engine.begin() as conn:  # a day and a second old: past IDEMPOTENCY_KEY_TTL (86400 s)
        conn.execute(text("UPDATE idempotency_keys SET created_at = now() - interval '86401 seconds'"))
    with ClusterRpcProxy({"AMQP_URI": amqp_uri}, timeout=HTTP_TIMEOUT) as rpc:
        assert rpc.person.purge_idempotency_keys() == 1
    with person_engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM idempotency_keys")).scalar() == 0

    again = post(api, f"/person/{CPF}/income", body, "old-key")

    assert again.status_code == 201 and again.json()["id"] != first.json()["id"]  # written again
    with person_engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM income")).scalar() == 2
