"""The gateway's OpenAPI 3.1 document (``gateway/openapi.yaml``, kept by hand,
with what depends on the kinds of item filled from :mod:`contracts.kinds`, and
each route's token scope from its ``@http`` declaration)
and the public routes the gateway really serves (:mod:`gateway.routes`), to
check one against the other.

Example::

    >>> from gateway.openapi import openapi_document, gateway_routes
    >>> openapi_document()["info"]["title"]
    'Person and credit score gateway'
    >>> gateway_routes()[("POST", "/person/{cpf}/{kind}")]
    {'cpf': None, 'kind': ['income', 'asset', 'debt']}
"""

import functools
from pathlib import Path

import yaml

from contracts.kinds import KINDS
from gateway.routes import openapi_path, routes  # noqa: F401  (openapi_path: part of this module's API)

DOCUMENT_PATH = Path(__file__).with_name("openapi.yaml")


@functools.cache
def openapi_document() -> dict:
    """The document as a dict, read once per process. Shared: do not change it."""
    with DOCUMENT_PATH.open(encoding="utf-8") as file:
        return _with_edge_answers(_with_scopes(_with_kinds(yaml.safe_load(file))))


# What any route may answer besides its own statuses: the gateway's 431, and
# Traefik's (gateway/edge.py) 429, 502 and 504 in front of every route.
EDGE_ANSWERS = {"429": "TooManyRequests", "431": "HeadersTooLarge", "502": "BadGateway", "504": "GatewayTimeout"}


def _with_edge_answers(document: dict) -> dict:
    for item in document["paths"].values():
        for operation in item.values():
            for status, response in EDGE_ANSWERS.items():
                operation["responses"].setdefault(status, {"$ref": f"#/components/responses/{response}"})
    return document


def _with_scopes(document: dict) -> dict:
    """Each scoped route's bearer security, with its scope, and its 401 and
    403 answers, from the route's own ``@http(..., scope=)``. Optional
    (``{}``): with ``API_TOKENS`` empty every route is open."""
    for (method, path), scope in route_scopes().items():
        if scope is None:
            continue
        operation = document["paths"][path][method.lower()]
        operation["security"] = [{}, {"bearerAuth": [scope]}]
        operation["responses"]["401"] = {"$ref": "#/components/responses/Unauthorized"}
        operation["responses"]["403"] = {"$ref": "#/components/responses/Forbidden"}
    return document


def _with_kinds(document: dict) -> dict:
    """The parts the kinds of item decide: the route's enum, a person's lists,
    the counts and the score's breakdown with each kind's rule."""
    [kind_parameter] = [
        p for p in document["paths"]["/person/{cpf}/{kind}"]["post"]["parameters"] if p.get("name") == "kind"
    ]
    kind_parameter["schema"]["enum"] = [kind.name for kind in KINDS]
    schemas = document["components"]["schemas"]
    person = schemas["PersonFields"]
    counts = schemas["KindCounts"]
    breakdown = schemas["Score"]["properties"]["breakdown"]
    for kind in KINDS:
        item = "TypedItem" if kind.typed else "UntypedItem"
        person["required"].append(kind.plural)
        person["properties"][kind.plural] = {"type": "array", "items": {"$ref": f"#/components/schemas/{item}"}}
        counts["required"].append(kind.name)
        counts["properties"][kind.name] = {"type": "integer", "minimum": 0}
        rule = f"{'-' if kind.sign < 0 else ''}floor(value/{kind.divisor})"
        bound = {"minimum": 0} if kind.sign > 0 else {"maximum": 0}
        breakdown["required"].append(kind.name)
        described = {"type": "integer", "description": f"{kind.name}: {rule} per item"}
        breakdown["properties"][kind.name] = {**described, **bound}
    return document


def gateway_routes(service_cls=None) -> dict:
    """``{(METHOD, openapi path): {variable: allowed values or None}}`` for every
    public route of ``service_cls`` (default: the gateway's service): the API
    a client reaches through Traefik, which this document describes."""
    return {(r.method, r.path): r.variables for r in routes(service_cls) if r.public}


def route_scopes(service_cls=None) -> dict:
    """``{(METHOD, openapi path): the scope its token needs, or None (open)}``, public routes."""
    return {(r.method, r.path): r.scope for r in routes(service_cls) if r.public}
