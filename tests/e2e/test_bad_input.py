"""Bad input through the HTTP gateway, on real processes: every rejection is a JSON
error of the documented shape, and nothing half-written stays behind."""

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import requests
from sqlalchemy import text

from harness.api import (
    HTTP_TIMEOUT,
    assert_json_error,
    create_person,
    person_body,
    table_counts,
)
from harness.cpf import cpf_from

pytestmark = pytest.mark.e2e

KNOWN = "52998224725"  # created before a case that needs a person
UNKNOWN = cpf_from("111444777")  # valid, never created
JSON = {"Content-Type": "application/json"}


def case(
    id,
    method,
    path,
    status,
    code,
    *,
    json_body=None,
    data=None,
    headers=None,
    fields=None,
    person=False,
    allow=None,
):
    """One row of the table. ``data`` is sent raw; ``json_body`` is JSON-encoded by requests.

    ``fields``: for a 422, the field names that must be named (exactly).
    ``person``: create ``KNOWN`` first (so the rejection is not a 404).
    """
    return pytest.param(
        {
            "method": method,
            "path": path,
            "status": status,
            "code": code,
            "json": json_body,
            "data": data,
            "headers": headers,
            "fields": fields,
            "person": person,
            "allow": allow,
        },
        id=id,
    )


def invalid(id, path, body, fields, person=False):
    return case(id, "POST", path, 422, "INVALID_INPUT", json_body=body, fields=fields, person=person)


PERSON_CASES = [
    case("malformed-json", "POST", "/person", 400, "MALFORMED_JSON", data='{"cpf": "529', headers=JSON),
    case("empty-body", "POST", "/person", 400, "EMPTY_BODY", data=b"", headers=JSON),
    case(
        "text-plain",
        "POST",
        "/person",
        415,
        "UNSUPPORTED_MEDIA_TYPE",
        data=json.dumps(person_body()),
        headers={"Content-Type": "text/plain"},
    ),
    case("no-content-type", "POST", "/person", 415, "UNSUPPORTED_MEDIA_TYPE", data=json.dumps(person_body())),
    case(
        "form-encoded",
        "POST",
        "/person",
        415,
        "UNSUPPORTED_MEDIA_TYPE",
        data="cpf=52998224725&name=Ana",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    ),
    case("json-array", "POST", "/person", 422, "INVALID_INPUT", json_body=[person_body()]),
    case("json-string", "POST", "/person", 422, "INVALID_INPUT", json_body="52998224725"),
    case("json-null", "POST", "/person", 422, "INVALID_INPUT", data="null", headers=JSON),
    invalid("missing-all-fields", "/person", {}, {"cpf", "name", "address", "date_of_birth"}),
    invalid("missing-cpf", "/person", {k: v for k, v in person_body().items() if k != "cpf"}, {"cpf"}),
    invalid("unknown-field", "/person", person_body(nickname="Aninha"), {"nickname"}),
    invalid("cpf-too-short", "/person", person_body(cpf="5299822472"), {"cpf"}),
    invalid("cpf-too-long", "/person", person_body(cpf="529982247250"), {"cpf"}),
    invalid("cpf-wrong-check-digit", "/person", person_body(cpf="52998224726"), {"cpf"}),
    invalid("cpf-all-same-digits", "/person", person_body(cpf="111.111.111-11"), {"cpf"}),
    invalid("cpf-letters", "/person", person_body(cpf="5299822472a"), {"cpf"}),
    invalid("cpf-boolean", "/person", person_body(cpf=True), {"cpf"}),
    invalid("cpf-null", "/person", person_body(cpf=None), {"cpf"}),
    invalid("cpf-negative-int", "/person", person_body(cpf=-52998224725), {"cpf"}),
    invalid("birth-far-future", "/person", person_body(date_of_birth="2999-01-01"), {"date_of_birth"}),
    invalid(
        "birth-tomorrow",
        "/person",
        person_body(date_of_birth=(datetime.now(UTC) + timedelta(days=2)).date().isoformat()),
        {"date_of_birth"},
    ),
    invalid("birth-garbage", "/person", person_body(date_of_birth="not-a-date"), {"date_of_birth"}),
    invalid("birth-impossible-day", "/person", person_body(date_of_birth="1990-02-30"), {"date_of_birth"}),
    invalid("birth-number", "/person", person_body(date_of_birth=19900501), {"date_of_birth"}),
    invalid("name-blank", "/person", person_body(name="   "), {"name"}),
    invalid("name-empty", "/person", person_body(name=""), {"name"}),
    invalid("name-201-chars", "/person", person_body(name="a" * 201), {"name"}),
    invalid("name-not-string", "/person", person_body(name=123), {"name"}),
    invalid("address-blank", "/person", person_body(address="\t \n"), {"address"}),
    invalid(
        "several-bad-fields",
        "/person",
        person_body(cpf="123", name=" ", date_of_birth="x"),
        {"cpf", "name", "date_of_birth"},
    ),
    case(
        "body-over-64KiB",
        "POST",
        "/person",
        413,
        "BODY_TOO_LARGE",
        json_body=person_body(address="x" * (64 * 1024 + 100)),
    ),
    case(
        "duplicate-cpf",
        "POST",
        "/person",
        409,
        "PERSON_ALREADY_EXISTS",
        json_body=person_body(cpf="529.982.247-25", name="Someone Else"),
        person=True,
    ),
    case(
        "duplicate-cpf-as-integer",
        "POST",
        "/person",
        409,
        "PERSON_ALREADY_EXISTS",
        json_body=person_body(cpf=int(KNOWN)),
        person=True,
    ),
]

BAD_VALUES = [
    ("negative", -10),
    ("zero", 0),
    ("zero-string", "0.00"),
    ("three-decimal-places", 10.123),
    ("three-decimal-places-string", "10.125"),
    ("string-abc", "abc"),
    ("empty-string", ""),
    ("boolean", True),
    ("null", None),
    ("list", [100]),
    ("huge-1e13", 1e13),
    ("huge-int", 10**30),
    ("nan-string", "NaN"),
    ("infinity-string", "Infinity"),
    ("underscore-string", "1_000"),
    ("exponent-string", "1e3"),
    ("thousands-separator", "1,000.00"),
]


def _item(kind, value):
    return {"value": value} if kind == "debt" else {"type": "renting", "value": value}


ITEM_CASES = [
    invalid(f"{kind}-value-{name}", f"/person/{KNOWN}/{kind}", _item(kind, value), {"value"}, person=True)
    for kind in ("income", "asset", "debt")
    for name, value in BAD_VALUES
]
ITEM_CASES += [
    case(
        "income-raw-json-NaN",
        "POST",
        f"/person/{KNOWN}/income",
        422,
        "INVALID_INPUT",
        data='{"type": "renting", "value": NaN}',
        headers=JSON,
        fields={"value"},
        person=True,
    ),
    case(
        "income-raw-json-1e13",
        "POST",
        f"/person/{KNOWN}/income",
        422,
        "INVALID_INPUT",
        data='{"type": "renting", "value": 1e13}',
        headers=JSON,
        fields={"value"},
        person=True,
    ),
]
for kind in ("income", "asset", "debt"):
    ITEM_CASES += [
        case(
            f"{kind}-unknown-person",
            "POST",
            f"/person/{UNKNOWN}/{kind}",
            404,
            "PERSON_NOT_FOUND",
            json_body=_item(kind, 100),
        ),
        invalid(f"{kind}-malformed-path-cpf", f"/person/12345/{kind}", _item(kind, 100), {"cpf"}),
        invalid(f"{kind}-bad-check-digit-path-cpf", f"/person/52998224726/{kind}", _item(kind, 100), {"cpf"}),
        invalid(
            f"{kind}-missing-value",
            f"/person/{KNOWN}/{kind}",
            {k: v for k, v in _item(kind, 1).items() if k != "value"},
            {"value"},
            True,
        ),
        case(
            f"{kind}-malformed-json",
            "POST",
            f"/person/{KNOWN}/{kind}",
            400,
            "MALFORMED_JSON",
            data="{value: 1}",
            headers=JSON,
            person=True,
        ),
        case(
            f"{kind}-empty-body",
            "POST",
            f"/person/{KNOWN}/{kind}",
            400,
            "EMPTY_BODY",
            data=b"",
            headers=JSON,
            person=True,
        ),
        case(
            f"{kind}-text-plain",
            "POST",
            f"/person/{KNOWN}/{kind}",
            415,
            "UNSUPPORTED_MEDIA_TYPE",
            data=json.dumps(_item(kind, 100)),
            headers={"Content-Type": "text/plain"},
            person=True,
        ),
        case(
            f"{kind}-json-array",
            "POST",
            f"/person/{KNOWN}/{kind}",
            422,
            "INVALID_INPUT",
            json_body=[_item(kind, 100)],
            person=True,
        ),
    ]
for kind in ("income", "asset"):
    ITEM_CASES += [
        invalid(f"{kind}-missing-type", f"/person/{KNOWN}/{kind}", {"value": 100}, {"type"}, True),
        invalid(f"{kind}-blank-type", f"/person/{KNOWN}/{kind}", {"type": "  ", "value": 100}, {"type"}, True),
        invalid(
            f"{kind}-type-51-chars",
            f"/person/{KNOWN}/{kind}",
            {"type": "t" * 51, "value": 100},
            {"type"},
            True,
        ),
        invalid(
            f"{kind}-unknown-field",
            f"/person/{KNOWN}/{kind}",
            {"type": "renting", "value": 100, "note": "x"},
            {"note"},
            True,
        ),
    ]
ITEM_CASES += [
    invalid("debt-with-type-field", f"/person/{KNOWN}/debt", {"type": "loan", "value": 100}, {"type"}, True),
]

READ_AND_ROUTE_CASES = [
    case("get-person-short-cpf", "GET", f"/person/{KNOWN[:-1]}", 422, "INVALID_INPUT", fields={"cpf"}),
    case("get-person-bad-check-digit", "GET", "/person/52998224726", 422, "INVALID_INPUT", fields={"cpf"}),
    case("get-person-letters", "GET", "/person/abc", 422, "INVALID_INPUT", fields={"cpf"}),
    case("get-person-unknown", "GET", f"/person/{UNKNOWN}", 404, "PERSON_NOT_FOUND"),
    case("get-score-unknown", "GET", f"/{UNKNOWN}/score", 404, "SCORE_NOT_FOUND"),
    case("get-score-abc", "GET", "/abc/score", 422, "INVALID_INPUT", fields={"cpf"}),
    case("get-score-bad-check-digit", "GET", "/52998224726/score", 422, "INVALID_INPUT", fields={"cpf"}),
    case("unknown-route", "GET", "/no/such/route", 404, "NOT_FOUND"),
    case("unknown-root-route", "GET", "/nope", 404, "NOT_FOUND"),
    case(
        "unknown-item-kind",
        "POST",
        f"/person/{KNOWN}/car",
        404,
        "NOT_FOUND",
        json_body={"value": 1},
        person=True,
    ),
    case("delete-person-collection", "DELETE", "/person", 405, "METHOD_NOT_ALLOWED", allow={"POST"}),
    case("get-person-collection", "GET", "/person", 405, "METHOD_NOT_ALLOWED", allow={"POST"}),
    case(
        "put-person",
        "PUT",
        f"/person/{KNOWN}",
        405,
        "METHOD_NOT_ALLOWED",
        json_body=person_body(),
        allow={"GET"},
        person=True,
    ),
    case("delete-score", "DELETE", f"/{KNOWN}/score", 405, "METHOD_NOT_ALLOWED", allow={"GET"}),
]


def _send(api, spec):
    return requests.request(
        spec["method"],
        api + spec["path"],
        json=spec["json"],
        data=spec["data"],
        headers=spec["headers"],
        timeout=HTTP_TIMEOUT,
    )


@pytest.mark.parametrize("spec", PERSON_CASES + ITEM_CASES + READ_AND_ROUTE_CASES)
def test_bad_input_is_a_json_error_and_writes_nothing(api, person_engine, spec):
    if spec["person"]:
        create_person(api, KNOWN)
    before = table_counts(person_engine)

    response = _send(api, spec)

    body = assert_json_error(response, spec["status"], spec["code"])
    if spec["status"] == 422:
        assert isinstance(body.get("fields"), dict) and body["fields"], body
        if spec["fields"] is not None:
            assert set(body["fields"]) == spec["fields"], body
        for messages in body["fields"].values():
            assert messages, body
    else:
        assert "fields" not in body, body
    if spec["allow"] is not None:
        allowed = {m.strip() for m in response.headers.get("Allow", "").split(",") if m.strip()}
        assert spec["allow"] <= allowed, response.headers
        assert spec["method"] not in allowed, response.headers

    # Nothing half-written: the rejected request added no row anywhere.
    assert table_counts(person_engine) == before


def test_a_rejected_person_can_then_be_created(api, person_engine):
    """A rejection leaves no trace that would block the corrected request (no stray
    person row, no reserved sequence)."""
    bad = requests.post(f"{api}/person", json=person_body(date_of_birth="2999-01-01"), timeout=HTTP_TIMEOUT)
    assert_json_error(bad, 422, "INVALID_INPUT")
    created = requests.post(f"{api}/person", json=person_body(), timeout=HTTP_TIMEOUT)
    assert created.status_code == 201, created.text
    with person_engine.connect() as conn:
        rows = conn.execute(text("SELECT event_type, sequence FROM outbox ORDER BY position")).all()
    assert [tuple(r) for r in rows] == [("person_created", 1)]


def test_rejected_items_do_not_consume_sequence_numbers(api, person_engine):
    create_person(api, KNOWN)
    for value in (-1, "abc", 1e13):
        response = requests.post(
            f"{api}/person/{KNOWN}/income", json={"type": "renting", "value": value}, timeout=HTTP_TIMEOUT
        )
        assert_json_error(response, 422, "INVALID_INPUT")
    ok = requests.post(f"{api}/person/{KNOWN}/income", json={"type": "renting", "value": 100}, timeout=HTTP_TIMEOUT)
    assert ok.status_code == 201, ok.text
    with person_engine.connect() as conn:
        sequences = conn.execute(
            text("SELECT sequence FROM outbox WHERE aggregate_key = :cpf ORDER BY sequence"), {"cpf": KNOWN}
        ).scalars()
        assert list(sequences) == [1, 2]
        assert conn.execute(text("SELECT last_sequence FROM person WHERE cpf = :c"), {"c": KNOWN}).scalar() == 2


# --- inputs that look odd but are valid ------------------------------------------


def test_cpf_as_json_integer_keeps_its_leading_zero(api, person_engine):
    response = requests.post(f"{api}/person", json=person_body(cpf=1234567890), timeout=HTTP_TIMEOUT)
    assert response.status_code == 201, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.json()["cpf"] == "01234567890"
    assert response.headers["Location"] == "/person/01234567890"
    with person_engine.connect() as conn:
        assert conn.execute(text("SELECT cpf FROM person")).scalars().all() == ["01234567890"]
        assert conn.execute(text("SELECT aggregate_key FROM outbox")).scalars().all() == ["01234567890"]
    fetched = requests.get(f"{api}/person/01234567890", timeout=HTTP_TIMEOUT)
    assert fetched.status_code == 200, fetched.text
    assert fetched.json()["cpf"] == "01234567890"


def test_punctuated_cpf_is_stored_bare(api, person_engine):
    response = requests.post(f"{api}/person", json=person_body(cpf=" 529.982.247-25 "), timeout=HTTP_TIMEOUT)
    assert response.status_code == 201, response.text
    assert response.json()["cpf"] == KNOWN
    assert response.headers["Location"] == f"/person/{KNOWN}"
    with person_engine.connect() as conn:
        assert conn.execute(text("SELECT cpf FROM person")).scalars().all() == [KNOWN]
    # and the punctuated form reaches the same person on read
    fetched = requests.get(f"{api}/person/529.982.247-25", timeout=HTTP_TIMEOUT)
    assert fetched.status_code == 200, fetched.text
    assert fetched.json()["cpf"] == KNOWN


@pytest.mark.parametrize(
    ("kind", "sent", "stored"),
    [
        ("income", "1000.50", "1000.50"),
        ("asset", "0.01", "0.01"),
        ("debt", " 42.1 ", "42.10"),
        ("income", 1000.1, "1000.10"),
        ("asset", "999999999999.99", "999999999999.99"),
    ],
)
def test_money_as_decimal_string_or_number_is_exact(api, person_engine, kind, sent, stored):
    create_person(api, KNOWN)
    body = {"value": sent} if kind == "debt" else {"type": "renting", "value": sent}
    response = requests.post(f"{api}/person/{KNOWN}/{kind}", json=body, timeout=HTTP_TIMEOUT)
    assert response.status_code == 201, response.text
    assert response.json()["value"] == stored
    with person_engine.connect() as conn:
        assert conn.execute(text(f"SELECT value FROM {kind}")).scalars().all() == [Decimal(stored)]
        payload = conn.execute(
            text("SELECT payload FROM outbox WHERE event_type = :t"), {"t": f"{kind}_added"}
        ).scalar_one()
    # the event carries money as a decimal string, never a float
    assert payload["data"]["value"] == stored, payload
    assert payload["cpf"] == KNOWN and payload["sequence"] == 2, payload


# --- hostile input that must still be a 4xx, never a 500 ---------------------------


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param("[" * 20000 + "]" * 20000, id="nested-arrays"),
        pytest.param('{"a":' * 5000 + "1" + "}" * 5000, id="nested-objects"),
    ],
)
def test_deeply_nested_json_is_a_client_error(api, person_engine, raw):
    """Under the 64 KiB limit but deeper than the JSON decoder's recursion limit."""
    assert len(raw.encode()) < 64 * 1024
    before = table_counts(person_engine)
    response = requests.post(f"{api}/person", data=raw, headers=JSON, timeout=HTTP_TIMEOUT)
    assert 400 <= response.status_code < 500, response.text
    assert_json_error(response, response.status_code)
    assert table_counts(person_engine) == before


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        pytest.param("/person", person_body(name="A\u0000na"), "name", id="person-name"),
        pytest.param("/person", person_body(address="Rua\u0000A"), "address", id="person-address"),
        pytest.param(f"/person/{KNOWN}/income", {"type": "rent\u0000ing", "value": 1}, "type", id="income-type"),
    ],
)
def test_nul_character_in_text_is_rejected_as_invalid(api, person_engine, path, body, field):
    """PostgreSQL text cannot hold U+0000; that is the client's bad input (422), not a 500."""
    create_person(api, cpf_from("123456789"))
    if path != "/person":
        create_person(api, KNOWN)
    before = table_counts(person_engine)
    response = requests.post(f"{api}{path}", json=body, timeout=HTTP_TIMEOUT)
    body = assert_json_error(response, 422, "INVALID_INPUT")
    assert field in body.get("fields", {}), body
    assert table_counts(person_engine) == before
