"""The running gateway against its own OpenAPI document, fuzzed with schemathesis.

The document is loaded from the live ``GET /openapi.json``. Each operation gets
the document's examples, schemathesis' coverage cases (boundaries, missing and
wrongly typed fields, other methods) and ``API_FUZZ_EXAMPLES`` (default 25)
generated cases, valid and invalid, each sent over HTTP and checked: no 5xx,
a documented status code, content type and headers, and a body that conforms
to the document. Hand-written probes add inputs the generator does not make
(raw bytes, NaN, deep nesting, lone surrogates), checked the same way.

The cases are the same on every run (derandomized, no example database), so a
failure reproduces; ``API_FUZZ_RANDOM=1`` explores new ones.
"""

import collections
import os
import time
from datetime import date
from urllib.parse import quote

import hypothesis
import pytest
import requests
import schemathesis
from hypothesis import strategies as st
from schemathesis.generation.feedback import FeedbackSources
from schemathesis.pytest._test_builder import build_operation_test  # what schemathesis' pytest plugin runs

from gateway.auth import SCOPES
from gateway.openapi import openapi_document, route_scopes
from harness.api import HTTP_TIMEOUT, create_person, person_body
from harness.cpf import cpf_from
from harness.processes import started

pytestmark = pytest.mark.e2e

MAX_EXAMPLES = int(os.environ.get("API_FUZZ_EXAMPLES", "25"))
RANDOM = os.environ.get("API_FUZZ_RANDOM") == "1"
KNOWN = "52998224725"  # the document's example CPF: created first, so the examples reach the 2xx answers
TOKEN = "fuzz-token"
BEARER = {"Authorization": f"Bearer {TOKEN}"}

CHECKS = [
    schemathesis.checks.not_a_server_error,
    schemathesis.checks.status_code_conformance,
    schemathesis.checks.content_type_conformance,
    schemathesis.checks.response_headers_conformance,
    schemathesis.checks.response_schema_conformance,
]

# (METHOD, path) -> whether the operation takes any input, for every documented
# operation, read at collection time; tests/unit/test_openapi.py checks that
# they are the gateway's routes.
OPERATIONS = {
    (method.upper(), path): bool(operation.get("parameters") or operation.get("requestBody"))
    for path, item in openapi_document()["paths"].items()
    for method, operation in item.items()
    if method in {"get", "post", "put", "patch", "delete"}
}
SCOPED = sorted(key for key, scope in route_scopes().items() if scope)


@pytest.fixture(scope="module")
def system(amqp_uri, db_uris, tmp_path_factory):
    """The e2e system, with a short read-your-writes wait: the fuzzer asks for
    ``min_sequence`` values no write ever produced, and each such read waits
    the whole bound before answering stale (2 s by default)."""
    with started(
        amqp_uri, db_uris, tmp_path_factory.mktemp("fuzz-logs"), edge=True, READ_YOUR_WRITES_TIMEOUT="0.1"
    ) as running:
        yield running


def load_schema(url, *, coverage=True, headers=None):
    config = schemathesis.Config.from_dict(
        {
            "base-url": url,
            "request-timeout": HTTP_TIMEOUT,
            "headers": headers or {},
            "generation": {
                "mode": "all",  # valid and invalid input
                "max-examples": MAX_EXAMPLES,
                "deterministic": not RANDOM,
                "database": "none",
            },
            "phases": {"examples": {"enabled": True}, "coverage": {"enabled": coverage}, "fuzzing": {"enabled": True}},
        }
    )
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json", config=config)
    schema.hook(flatmap_body)
    schema.hook(flatmap_path_parameters)
    return schema


def flatmap_body(context, body):
    """Half the person bodies get a valid CPF and birth date, so that fuzzed
    names and addresses get past those checks and reach the database."""
    if context.operation.path != "/person" or not isinstance(body, dict) or "cpf" not in body:
        return st.just(body)
    cpfs = st.integers(10**8, 10**9 - 1).map(lambda n: cpf_from(str(n)))
    births = st.dates(date(1900, 1, 1), date(2020, 12, 31)).map(date.isoformat)
    valid = st.builds(lambda cpf, born: {**body, "cpf": cpf, "date_of_birth": born}, cpfs, births)
    return st.one_of(st.just(body), valid)


def flatmap_path_parameters(context, path_parameters):
    """Half the cases name the existing person, so that fuzzed items and
    ``min_sequence`` values are not all answered 404 or 422 for the CPF."""
    if not path_parameters or "cpf" not in path_parameters:
        return st.just(path_parameters)
    return st.one_of(st.just(path_parameters), st.just({**path_parameters, "cpf": KNOWN}))


@pytest.fixture(scope="module")
def live_schema(system):
    return load_schema(system.url)


def fuzz(schema, method, path):
    """Run the operation's cases, checking each answer; ``{status: count}``."""
    statuses = collections.Counter()

    def call_and_check(case):
        response = case.call()
        statuses[response.status_code] += 1
        case.validate_response(response, checks=CHECKS)

    test = build_operation_test(
        config=schema.config,
        operation=schema[path][method],
        test_func=call_and_check,
        given_kwargs={},
        feedback=FeedbackSources(),
        explicit_settings=hypothesis.settings(
            deadline=None,
            suppress_health_check=list(hypothesis.HealthCheck),
            verbosity=hypothesis.Verbosity.quiet,
        ),
    )
    started = time.monotonic()
    test()
    print(f"\n{method} {path}: {sum(statuses.values())} calls in {time.monotonic() - started:.1f} s, {dict(statuses)}")
    return statuses


def test_the_served_document_is_the_yaml(system):
    served = requests.get(f"{system.url}/openapi.json", timeout=HTTP_TIMEOUT)
    assert served.status_code == 200
    assert served.headers["Content-Type"].startswith("application/json")
    assert served.json() == openapi_document()


@pytest.mark.parametrize("method, path", sorted(OPERATIONS), ids=[f"{m} {p}" for m, p in sorted(OPERATIONS)])
def test_every_answer_conforms_to_the_document(api, live_schema, method, path):
    if (method, path) != ("POST", "/person"):
        create_person(api, KNOWN)

    statuses = fuzz(live_schema, method, path)

    # It ran: the examples, the coverage cases and at least half the generated
    # ones (an operation without input has one case, and the coverage phase's
    # other methods), and it reached the success answer, not only rejections.
    calls = sum(statuses.values())
    assert calls >= (MAX_EXAMPLES // 2 if OPERATIONS[method, path] else 2), statuses
    assert any(200 <= status < 300 for status in statuses), statuses


def probe(schema, method, path, *, path_parameters=None, query=None, headers=None, data=None):
    """Send a hand-made request for a documented operation and check the answer
    like the fuzzer's (``data`` is sent as is: bytes or text, not re-encoded)."""
    case = schema[path][method].Case(path_parameters=path_parameters, query=query, headers=headers)
    url = schema.get_base_url() + path.format(**{k: quote(v, safe="") for k, v in (path_parameters or {}).items()})
    response = requests.request(method, url, params=query, headers=headers, data=data, timeout=HTTP_TIMEOUT)
    case.validate_response(response, checks=CHECKS)
    return response


JSON = {"Content-Type": "application/json"}
BIG = "1" + "0" * 5000  # past Python's 4300-digit limit for int()
PERSON = '{"cpf": "11144477735", "name": %s, "address": "Rua A, 1", "date_of_birth": "1990-05-01"}'
PROBES = {
    "NaN money": ("POST", "/person/{cpf}/{kind}", {"kind": "debt"}, None, JSON, '{"value": NaN}', 422),
    "1e400 money": ("POST", "/person/{cpf}/{kind}", {"kind": "debt"}, None, JSON, '{"value": 1e400}', 422),
    "5000-digit integer": ("POST", "/person/{cpf}/{kind}", {"kind": "debt"}, None, JSON, '{"value": ' + BIG + "}", 400),
    "nested 5000 deep": ("POST", "/person/{cpf}/{kind}", {"kind": "debt"}, None, JSON, "[" * 5000 + "]" * 5000, 400),
    "not UTF-8": ("POST", "/person/{cpf}/{kind}", {"kind": "debt"}, None, JSON, b"\xff\xfe{", 400),
    "a JSON list": ("POST", "/person", {}, None, JSON, "[1, 2]", 422),
    "a JSON string": ("POST", "/person", {}, None, JSON, '"person"', 422),
    "text/plain": ("POST", "/person", {}, None, {"Content-Type": "text/plain"}, PERSON % '"Ana"', 415),
    "empty body": ("POST", "/person", {}, None, JSON, b"", 400),
    "NUL in a name": ("POST", "/person", {}, None, JSON, PERSON % '"A\\u0000na"', 422),
    "over 64 KiB": ("POST", "/person", {}, None, JSON, PERSON % ('"%s"' % ("a" * 70000)), 413),
    "non-ASCII key": ("POST", "/person", {}, None, {**JSON, "Idempotency-Key": "\xe9"}, PERSON % '"Ana"', 422),
    "NUL in the CPF": ("GET", "/person/{cpf}", {"cpf": "52998224725\x00"}, None, {}, None, 422),
    "kind not an item": ("POST", "/person/{cpf}/{kind}", {"kind": "loan"}, None, JSON, '{"value": 1}', 404),
    # Traefik merges the two slashes (its sanitizePath): POST /person/debt, a route of GET and DELETE
    "empty cpf, item": ("POST", "/person/{cpf}/{kind}", {"cpf": "", "kind": "debt"}, None, JSON, '{"value": 1}', 405),
    "slash in cpf": ("GET", "/person/{cpf}", {"cpf": "x/income"}, None, {}, None, 405),
    "empty cpf, score": ("GET", "/{cpf}/score", {"cpf": ""}, None, {}, None, 404),
    "superscript two": ("GET", "/{cpf}/score", {}, {"min_sequence": "\xb2"}, {}, None, 422),
    "zero": ("GET", "/{cpf}/score", {}, {"min_sequence": "0"}, {}, None, 422),
    "2**31": ("GET", "/{cpf}/score", {}, {"min_sequence": str(2**31)}, {}, None, 422),
    "header -1": ("GET", "/{cpf}/score", {}, None, {"Min-Event-Sequence": "-1"}, None, 422),
    "unseen sequence": ("GET", "/{cpf}/score", {}, {"min_sequence": "99"}, {}, None, 200),
    # Found by this test, fixed: a lone UTF-16 surrogate failed the insert (500);
    # "//" in a path was a 308 without a Location; a long fraction was rounded.
    "lone surrogate in a name": ("POST", "/person", {}, None, JSON, PERSON % '"\\ud800"', 422),
    "lone surrogate in a type": (
        *("POST", "/person/{cpf}/{kind}", {"kind": "income"}, None, JSON),
        *('{"type": "\\udfff", "value": 1}', 422),
    ),
    "cpf ending in a slash": ("GET", "/{cpf}/score", {"cpf": KNOWN + "/"}, None, {}, None, 404),
    "money with 16 decimal places": (
        *("POST", "/person/{cpf}/{kind}", {"kind": "debt"}, None, JSON),
        *('{"value": 1.0000000000000001}', 422),
    ),
}


@pytest.mark.parametrize(
    "method, path, path_parameters, query, headers, data, status",
    [pytest.param(*probe, id=name) for name, probe in PROBES.items()],
)
def test_inputs_the_generator_does_not_make(
    api, live_schema, method, path, path_parameters, query, headers, data, status
):
    create_person(api, KNOWN)
    parameters = {"cpf": KNOWN, **path_parameters} if "{cpf}" in path else path_parameters
    response = probe(live_schema, method, path, path_parameters=parameters, query=query, headers=headers, data=data)
    assert response.status_code == status, response.text


@pytest.fixture(scope="module")
def secured(amqp_uri, db_uris, tmp_path_factory):
    """A second system, with ``API_TOKENS`` set: the scoped routes' 401 answers."""
    # Every scope, so that every scoped route gets past the check with it.
    tokens = f"{TOKEN}:{'+'.join(SCOPES)}"
    with started(amqp_uri, db_uris, tmp_path_factory.mktemp("fuzz-auth-logs"), edge=True, API_TOKENS=tokens) as running:
        yield running


@pytest.mark.parametrize("method, path", SCOPED, ids=[f"{m} {p}" for m, p in SCOPED])
def test_with_api_tokens_a_scoped_route_without_one_is_a_documented_401(secured, clean_databases, method, path):
    statuses = fuzz(load_schema(secured.url, coverage=False), method, path)
    # A generated path parameter that leaves the route ("", a "/" in the CPF) is
    # a 404 before any token is looked at: no route, nothing behind it.
    assert set(statuses) <= {401, 404} and statuses[401] >= MAX_EXAMPLES // 2, statuses

    # and with the token the same operation gets past the check
    if path != "/person":
        created = requests.post(f"{secured.url}/person", json=person_body(KNOWN), headers=BEARER, timeout=HTTP_TIMEOUT)
        assert created.status_code == 201, created.text
    statuses = fuzz(load_schema(secured.url, coverage=False, headers=BEARER), method, path)
    assert 401 not in statuses and 403 not in statuses, statuses
    if method == "POST":  # a generated read rarely names the one person there is
        assert any(200 <= status < 300 for status in statuses), statuses
