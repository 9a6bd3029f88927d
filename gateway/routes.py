"""The gateway's routes, read from its ``@http`` declarations: what the API
document (:mod:`gateway.openapi`) and Traefik's routers (:mod:`gateway.edge`)
are made from, so neither spells a route again.

A route is *public* unless declared ``@http(..., public=False)``: Traefik
routes the public ones only. The others (``/metrics``, the edge's error pages,
the load balancer's check) answer on a gateway's own port, for the machines
around it.

Example::

    >>> from gateway.routes import routes
    >>> [(r.method, r.path) for r in routes() if r.rule == "/person"]
    [('POST', '/person')]
    >>> sorted(r.path for r in routes() if not r.public)
    ['/errors/{status}', '/health/gateway', '/metrics']
"""

import inspect
import re
from dataclasses import dataclass

# A werkzeug rule variable: <name>, <converter:name> or <converter(args):name>.
_RULE_VARIABLE = re.compile(r"<(?:(?P<converter>\w+)(?:\((?P<args>[^)]*)\))?:)?(?P<name>\w+)>")


@dataclass(frozen=True)
class Route:
    method: str  # GET, POST, ...
    rule: str  # werkzeug's: /person/<cpf>
    scope: str | None  # the token scope it needs (gateway.auth), None: open
    public: bool  # routed by Traefik

    @property
    def path(self) -> str:
        """The OpenAPI path: ``/person/{cpf}``."""
        return openapi_path(self.rule)[0]

    @property
    def variables(self) -> dict:
        """``{variable: allowed values, or None for any}``."""
        return openapi_path(self.rule)[1]


def openapi_path(rule: str) -> tuple[str, dict]:
    """A werkzeug rule as an OpenAPI path, with each variable's allowed values
    (the arguments of an ``any`` converter, else None).

    >>> openapi_path("/person/<cpf>/<any(income, asset, debt):kind>")
    ('/person/{cpf}/{kind}', {'cpf': None, 'kind': ['income', 'asset', 'debt']})
    """
    variables = {}

    def replace(match):
        name, converter, args = match["name"], match["converter"], match["args"]
        variables[name] = _any_values(args) if converter == "any" else None
        return "{" + name + "}"

    return _RULE_VARIABLE.sub(replace, rule), variables


def path_regexp(rule: str) -> str:
    """A Go regular expression matching exactly the paths of a werkzeug rule
    (for Traefik's ``PathRegexp``): a variable is one path segment, an ``any``
    one of its values, an ``int`` digits.

    >>> path_regexp("/person/<cpf>/<any(income, asset):kind>")
    '^/person/[^/]+/(?:income|asset)$'
    >>> path_regexp("/openapi.json")
    '^/openapi\\\\.json$'
    """
    parts, end = [], 0
    for match in _RULE_VARIABLE.finditer(rule):
        parts.append(re.escape(rule[end : match.start()]))
        if match["converter"] == "any":
            parts.append("(?:" + "|".join(re.escape(v) for v in _any_values(match["args"])) + ")")
        elif match["converter"] == "int":
            parts.append("[0-9]+")
        else:
            parts.append("[^/]+")
        end = match.end()
    parts.append(re.escape(rule[end:]))
    return "^" + "".join(parts) + "$"


def _any_values(args: str) -> list:
    return [value.strip().strip("'\"") for value in args.split(",") if value.strip()]


def routes(service_cls=None) -> list[Route]:
    """Every ``@http`` route of ``service_cls`` (default: the gateway's service),
    a :class:`Route` per method."""
    from nameko.web.handlers import HttpRequestHandler

    if service_cls is None:
        from gateway.service import GatewayService as service_cls

    found = []
    for _, function in inspect.getmembers(service_cls, inspect.isfunction):
        for entrypoint in getattr(function, "nameko_entrypoints", ()):
            if not isinstance(entrypoint, HttpRequestHandler):
                continue
            for verb in entrypoint.method.split(","):
                found.append(
                    Route(
                        method=verb.strip().upper(),
                        rule=entrypoint.url,
                        scope=getattr(entrypoint, "scope", None),
                        public=getattr(entrypoint, "public", True),
                    )
                )
    return sorted(found, key=lambda route: (route.rule, route.method))
