"""gateway/openapi.yaml: a valid OpenAPI document that describes exactly the
routes the gateway serves, with the error table, auth and read-your-writes
parts the code implements."""

import json

import pytest
from openapi_spec_validator import validate

from gateway.auth import SCOPES
from gateway.exceptions import MAPPED_ERRORS
from gateway.openapi import gateway_routes, openapi_document, openapi_path, route_scopes

HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


@pytest.fixture(scope="module")
def document():
    return openapi_document()


def resolve(document, obj):
    """Follow local ``$ref``s (``#/components/...``) until a plain object."""
    while isinstance(obj, dict) and "$ref" in obj:
        target = document
        for part in obj["$ref"].removeprefix("#/").split("/"):
            target = target[part.replace("~1", "/").replace("~0", "~")]
        obj = target
    return obj


def operations(document):
    """``{(METHOD, path): operation}`` for every operation in the document."""
    return {
        (method.upper(), path): operation
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method in HTTP_METHODS
    }


def parameters(document, path, method):
    item = document["paths"][path]
    params = [resolve(document, p) for p in item.get("parameters", []) + item[method.lower()].get("parameters", [])]
    return {(p["in"], p["name"]): p for p in params}


def test_the_document_is_valid_openapi(document):
    validate(document)
    assert document["openapi"].startswith("3.")


def test_the_yaml_holds_only_json_types(document):
    # An unquoted date or status code would load as a date or an int.
    assert json.loads(json.dumps(document)) == document


def test_paths_and_methods_are_exactly_the_gateways_routes(document):
    documented = set(operations(document))
    served = set(gateway_routes())
    assert not served - documented, f"routes not in gateway/openapi.yaml: {sorted(served - documented)}"
    assert not documented - served, f"documented but not served: {sorted(documented - served)}"


def test_every_path_variable_is_a_documented_path_parameter_with_its_values(document):
    for (method, path), variables in gateway_routes().items():
        documented = {name: p for (where, name), p in parameters(document, path, method).items() if where == "path"}
        assert set(documented) == set(variables), (method, path)
        for name, allowed in variables.items():
            schema = resolve(document, documented[name]["schema"])
            assert documented[name]["required"] is True
            assert schema.get("enum") == allowed, (method, path, name)


def test_the_item_kinds_are_an_enum_of_income_asset_debt(document):
    assert gateway_routes()[("POST", "/person/{cpf}/{kind}")] == {"cpf": None, "kind": ["income", "asset", "debt"]}
    kind = parameters(document, "/person/{cpf}/{kind}", "POST")[("path", "kind")]
    assert kind["schema"]["enum"] == ["income", "asset", "debt"]


@pytest.mark.parametrize(
    "rule, expected",
    [
        ("/health", ("/health", {})),
        ("/<cpf>/score", ("/{cpf}/score", {"cpf": None})),
        (
            "/person/<cpf>/<any(income, asset, debt):kind>",
            ("/person/{cpf}/{kind}", {"cpf": None, "kind": ["income", "asset", "debt"]}),
        ),
        ("/x/<int:n>/<any('a','b'):k>", ("/x/{n}/{k}", {"n": None, "k": ["a", "b"]})),
    ],
)
def test_werkzeug_rules_become_openapi_paths(rule, expected):
    assert openapi_path(rule) == expected


# What each route's token must be allowed, as the issue asks; the code
# declares it once (@http(..., scope=)) and the document is filled from it.
EXPECTED_SCOPES = {
    ("POST", "/person"): "write",
    ("POST", "/person/{cpf}/{kind}"): "write",
    ("GET", "/person/{cpf}"): "read",
    ("GET", "/{cpf}/score"): "read",
    ("GET", "/health"): None,
    ("GET", "/openapi.json"): None,
}


def test_every_route_needs_the_scope_its_purpose_asks(document):
    assert {route: scope for route, scope in route_scopes().items() if route in EXPECTED_SCOPES} == EXPECTED_SCOPES
    assert {scope for scope in route_scopes().values() if scope} <= set(SCOPES)


def test_scoped_routes_declare_optional_bearer_auth_with_their_scope_and_open_routes_none(document):
    scheme = document["components"]["securitySchemes"]["bearerAuth"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    assert "security" not in document  # nothing global: the open routes stay open
    for (method, path), operation in operations(document).items():
        scope = route_scopes()[(method, path)]
        if scope is None:
            assert "security" not in operation, path
            assert "401" not in operation["responses"] and "403" not in operation["responses"], path
            continue
        assert operation["security"] == [{}, {"bearerAuth": [scope]}], path
        unauthorized = resolve(document, operation["responses"]["401"])
        assert unauthorized["headers"]["WWW-Authenticate"]["required"] is True
        assert "FORBIDDEN" in _error_codes(document, operation["responses"]["403"])
        if method == "POST":
            assert "Idempotency-Key" in {
                name for where, name in parameters(document, path, method) if where == "header"
            }


def test_writes_answer_with_their_sequence_in_the_body_and_a_header(document):
    for (method, path), operation in operations(document).items():
        if method != "POST":
            continue
        created = resolve(document, operation["responses"]["201"])
        header = resolve(document, created["headers"]["Event-Sequence"])
        assert header["required"] is True and header["schema"] == {"type": "integer", "minimum": 1}
        schema = resolve(document, created["content"]["application/json"]["schema"])
        variants = [resolve(document, s) for s in schema.get("oneOf", [schema])]
        for variant in variants:
            assert "sequence" in variant["required"], (path, variant)


def test_the_score_read_documents_min_sequence_and_the_replica_fields(document):
    params = parameters(document, "/{cpf}/score", "GET")
    for key in (("query", "min_sequence"), ("header", "Min-Event-Sequence")):
        assert params[key]["required"] is False
        assert resolve(document, params[key]["schema"])["minimum"] == 1
    ok = document["paths"]["/{cpf}/score"]["get"]["responses"]["200"]
    assert {"Event-Sequence", "Replica-Stale"} <= set(ok["headers"])
    score = resolve(document, ok["content"]["application/json"]["schema"])
    assert set(score["required"]) == {
        *("cpf", "score", "breakdown", "items", "last_sequence", "updated_at"),
        *("applied_sequence", "stale"),
    }
    assert score["properties"]["stale"]["type"] == "boolean"
    assert {"type": "null"} in score["properties"]["updated_at"]["oneOf"]


def _error_codes(document, response):
    """The ``error`` codes a documented error response allows."""
    schema = resolve(document, resolve(document, response)["content"]["application/json"]["schema"])
    codes = set()
    for part in [schema, *(resolve(document, s) for s in schema.get("allOf", []))]:
        error = part.get("properties", {}).get("error", {})
        codes |= {error["const"]} if "const" in error else set(error.get("enum", []))
    return codes


def test_every_error_of_the_gateways_table_is_documented_with_its_status(document):
    documented = {}
    for operation in operations(document).values():
        for status, response in operation["responses"].items():
            if int(status) >= 400 and operation["operationId"] != "health":
                documented.setdefault(int(status), set()).update(_error_codes(document, response))
    # Any route answers a wrong method with 405; the document says so once, as a component.
    documented[405] = _error_codes(document, document["components"]["responses"]["MethodNotAllowed"])
    table = {(status, code) for status, code in MAPPED_ERRORS.values()}
    missing = {(status, code) for status, code in table if code not in documented.get(status, set())}
    assert not missing, f"errors of gateway/exceptions.py not in gateway/openapi.yaml: {sorted(missing)}"
    assert {400, 401, 403, 404, 405, 409, 413, 415, 422, 503, 504} <= set(documented)
