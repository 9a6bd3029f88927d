"""The gateway's OpenAPI 3.1 document (``gateway/openapi.yaml``, kept by hand)
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

DOCUMENT_PATH = Path(__file__).with_name("openapi.yaml")

# A werkzeug rule variable: <name>, <converter:name> or <converter(args):name>.
_RULE_VARIABLE = re.compile(r"<(?:(?P<converter>\w+)(?:\((?P<args>[^)]*)\))?:)?(?P<name>\w+)>")


@functools.cache
def openapi_document() -> dict:
    """The document as a dict, read once per process. Shared: do not change it."""
    with DOCUMENT_PATH.open(encoding="utf-8") as file:
        return yaml.safe_load(file)


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


def gateway_routes(service_cls=None) -> dict:
    """``{(METHOD, openapi path): {variable: allowed values or None}}`` for every
    ``@http`` entrypoint of ``service_cls`` (default: the gateway's service)."""
    from nameko.web.handlers import HttpRequestHandler

    if service_cls is None:
        from gateway.service import GatewayService as service_cls

    routes = {}
    for _, method in inspect.getmembers(service_cls, inspect.isfunction):
        for entrypoint in getattr(method, "nameko_entrypoints", ()):
            if not isinstance(entrypoint, HttpRequestHandler):
                continue
            path, variables = openapi_path(entrypoint.url)
            for verb in entrypoint.method.split(","):
                routes[(verb.strip().upper(), path)] = variables
    return routes
