"""The gateway's OpenAPI 3.1 document (``gateway/openapi.yaml``, kept by hand,
with what depends on the kinds of item filled from :mod:`contracts.kinds`, and
each route's token scope from its ``@http`` declaration)
and the list of routes the gateway really serves, to check one against the other.

Example::

    >>> from gateway.openapi import openapi_document, gateway_routes
    >>> openapi_document()["info"]["title"]
    'Person and credit score gateway'
    >>> gateway_routes()[("POST", "/person/{cpf}/{kind}")]
    {'cpf': None, 'kind': ['income', 'asset', 'debt']}
"""

import functools
import inspect
import re
from pathlib import Path

import yaml

from contracts.kinds import KINDS

DOCUMENT_PATH = Path(__file__).with_name("openapi.yaml")

# A werkzeug rule variable: <name>, <converter:name> or <converter(args):name>.
_RULE_VARIABLE = re.compile(r"<(?:(?P<converter>\w+)(?:\((?P<args>[^)]*)\))?:)?(?P<name>\w+)>")


@functools.cache
def openapi_document() -> dict:
    """The document as a dict, read once per process. Shared: do not change it."""
    with DOCUMENT_PATH.open(encoding="utf-8") as file:
        return _with_scopes(_with_kinds(yaml.safe_load(file)))


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


def openapi_path(rule: str) -> tuple[str, dict]:
    """A werkzeug rule as an OpenAPI path, with each variable's allowed values
    (the arguments of an ``any`` converter, else None).

    >>> openapi_path("/person/<cpf>/<any(income, asset, debt):kind>")
    ('/person/{cpf}/{kind}', {'cpf': None, 'kind': ['income', 'asset', 'debt']})
    """
    variables = {}

    def replace(match):
        name, converter, args = match["name"], match["converter"], match["args"]
        allowed = None
        if converter == "any":
            allowed = [value.strip().strip("'\"") for value in args.split(",") if value.strip()]
        variables[name] = allowed
        return "{" + name + "}"

    return _RULE_VARIABLE.sub(replace, rule), variables


def _http_entrypoints(service_cls=None):
    """``(METHOD, openapi path, variables, scope)`` for every ``@http``
    entrypoint of ``service_cls`` (default: the gateway's service)."""
    from nameko.web.handlers import HttpRequestHandler

    if service_cls is None:
        from gateway.service import GatewayService as service_cls

    for _, method in inspect.getmembers(service_cls, inspect.isfunction):
        for entrypoint in getattr(method, "nameko_entrypoints", ()):
            if not isinstance(entrypoint, HttpRequestHandler):
                continue
            path, variables = openapi_path(entrypoint.url)
            for verb in entrypoint.method.split(","):
                yield verb.strip().upper(), path, variables, getattr(entrypoint, "scope", None)


def gateway_routes(service_cls=None) -> dict:
    """``{(METHOD, openapi path): {variable: allowed values or None}}`` for every
    ``@http`` entrypoint of ``service_cls`` (default: the gateway's service)."""
    return {(verb, path): variables for verb, path, variables, _ in _http_entrypoints(service_cls)}


def route_scopes(service_cls=None) -> dict:
    """``{(METHOD, openapi path): the scope its token needs, or None (open)}``."""
    return {(verb, path): scope for verb, path, _, scope in _http_entrypoints(service_cls)}
