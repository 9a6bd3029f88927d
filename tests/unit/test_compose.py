"""Structure checks for docker-compose.yml and the Dockerfile.

Docker cannot run where the tests run, so the Compose file is checked against
the Compose Specification's JSON schema plus the contracts the system relies
on (routing, commands, environment, start-up order).
"""

import copy
import importlib.resources
import json
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml

from harness.rabbit import COMPOSE_CLUSTER_CONF, cluster_uri, node_settings
from ops.permissions import DATABASES
from ops.provision import BROKER_USERS, DATABASE_ROLES, PROVISION_VARIABLES

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"

NAMEKO_SERVICES = ("person", "score", "gateway")
# Everything except the one-shot migrate job must stay up and report health.
LONG_RUNNING = ("traefik", "rabbitmq", "postgres") + NAMEKO_SERVICES + ("prometheus",)


def _compose_schema():
    # check-jsonschema vendors the compose-spec schema (from SchemaStore) and is
    # a pinned dev dependency: no network needed and the version is fixed.
    resource = importlib.resources.files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json")
    return json.loads(resource.read_text(encoding="utf-8"))


def _schema_errors(schema, document):
    validator_cls = jsonschema.validators.validator_for(schema)
    validator_cls.check_schema(schema)
    validator = validator_cls(schema)
    return sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))


def _as_dict(value):
    """Compose accepts both `KEY=VALUE` lists and mappings for env and labels."""
    if value is None:
        return {}
    if isinstance(value, dict):
        return {k: "" if v is None else str(v) for k, v in value.items()}
    return dict(item.split("=", 1) if "=" in item else (item, "") for item in value)


def _as_argv(command):
    return shlex.split(command) if isinstance(command, str) else list(command)


def _walk_strings(node, path=""):
    if isinstance(node, str):
        yield path, node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from _walk_strings(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _walk_strings(value, f"{path}[{index}]")


@pytest.fixture(scope="module")
def compose():
    with COMPOSE_FILE.open(encoding="utf-8") as fh:
        return yaml.safe_load(fh)


@pytest.fixture(scope="module")
def schema():
    return _compose_schema()


@pytest.fixture(scope="module")
def services(compose):
    return compose["services"]


def test_schema_is_the_2020_12_compose_spec(schema):
    # unevaluatedProperties, which rejects unknown service keys, only works
    # under draft 2020-12; an older validator would silently accept anything.
    assert schema["title"] == "Compose Specification"
    assert jsonschema.validators.validator_for(schema) is jsonschema.Draft202012Validator


def test_compose_file_matches_the_compose_schema(compose, schema):
    errors = _schema_errors(schema, compose)
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors)


def test_compose_file_has_no_obsolete_version_key(compose):
    assert "version" not in compose


@pytest.mark.parametrize(
    "mutate, culprit",
    [
        pytest.param(lambda d: d["services"]["person"].__setitem__("bogus", 1), "bogus", id="unknown-service-key"),
        pytest.param(lambda d: d.__setitem__("bogus", 1), "bogus", id="unknown-top-level-key"),
        pytest.param(
            lambda d: d["services"]["gateway"]["depends_on"]["person"].__setitem__("condition", "service_ready"),
            "service_ready",
            id="unknown-depends-on-condition",
        ),
    ],
)
def test_schema_validation_rejects_a_broken_file(compose, schema, mutate, culprit):
    broken = copy.deepcopy(compose)
    mutate(broken)
    errors = _schema_errors(schema, broken)
    assert errors, "the schema check accepted an invalid Compose file"
    assert any(culprit in error.message for error in errors)


def test_every_dollar_is_a_variable_or_escaped(compose):
    # Compose reads a bare `$name` as a variable and blanks it (e.g. inside an
    # htpasswd hash); a literal `$` must be written `$$`.
    bare = []
    for path, text in _walk_strings(compose):
        for token in re.findall(r"\$\$|\$\{|\$", text):
            if token == "$":
                bare.append(f"{path}: {text}")
    assert not bare, bare


def test_traefik_routes_to_both_gateways_from_the_generated_file_not_labels(services):
    # The routes live in docker/traefik/dynamic.yml (tests/unit/test_edge_config.py
    # keeps it the generator's); the gateways carry no routing labels.
    dynamic = yaml.safe_load((TRAEFIK_DIR / "dynamic.yml").read_text(encoding="utf-8"))
    for pool in ("gateway-pool", "gateway-any"):
        servers = [s["url"] for s in dynamic["http"]["services"][pool]["loadBalancer"]["servers"]]
        assert servers == [f"http://{name}:8000" for name in GATEWAYS]
    for name in GATEWAYS:
        assert _as_dict(services[name]["environment"])["WEB_SERVER_ADDRESS"] == "0.0.0.0:8000"
        assert not any(k.startswith("traefik.") for k in _as_dict(services[name].get("labels"))), name


def test_the_second_gateway_is_the_first_one_but_for_its_debug_port(services):
    first, second = (dict(services[name]) for name in GATEWAYS)
    assert _published_ports(first) == [("127.0.0.1", "8000", "8000")]
    assert _published_ports(second) == [("127.0.0.1", "8001", "8000")]
    first.pop("ports"), second.pop("ports")
    assert first == second


def test_traefik_is_v3_with_a_protected_dashboard(services):
    traefik = services["traefik"]
    assert re.fullmatch(r"traefik:v3(\.\d+)*", traefik["image"])
    assert _as_argv(traefik["command"]) == ["--configFile=/etc/traefik/traefik.yml"]
    assert "./docker/traefik:/etc/traefik:ro" in traefik["volumes"]
    static = yaml.safe_load((TRAEFIK_DIR / "traefik.yml").read_text(encoding="utf-8"))
    assert static["providers"]["docker"]["exposedByDefault"] is False
    assert static["entryPoints"]["web"]["address"] == ":80"
    assert static["entryPoints"]["traefik"]["address"] == ":8080"
    assert static["api"] == {"dashboard": True}, "the dashboard must not be insecure"

    assert "/var/run/docker.sock:/var/run/docker.sock:ro" in traefik["volumes"]

    labels = _as_dict(traefik.get("labels"))
    assert labels.get("traefik.enable") == "true"
    dashboard = [
        key.split(".")[3]
        for key, value in labels.items()
        if key.startswith("traefik.http.routers.") and key.endswith(".service") and value == "api@internal"
    ]
    assert dashboard, "no router serves api@internal"
    for router in dashboard:
        prefix = f"traefik.http.routers.{router}"
        assert labels[f"{prefix}.rule"] == "PathPrefix(`/api`) || PathPrefix(`/dashboard`)"
        assert labels[f"{prefix}.entrypoints"] == "traefik"
        middlewares = labels[f"{prefix}.middlewares"].split(",")
        users = [labels.get(f"traefik.http.middlewares.{m.strip()}.basicauth.users") for m in middlewares]
        assert any(users), f"router {router} has no basicauth middleware"
        assert all("TRAEFIK_DASHBOARD_USERS" in u for u in users if u)


@pytest.mark.parametrize("name", NAMEKO_SERVICES)
def test_nameko_service_runs_its_own_module(services, name):
    service = services[name]
    assert _as_argv(service["command"]) == ["nameko", "run", "--config", "config.yml", f"{name}.service"]
    assert service["build"] == "."
    assert service["restart"] == "unless-stopped"


def test_project_services_share_one_image(services):
    images = {services[name]["image"] for name in NAMEKO_SERVICES + ("migrate",)}
    assert len(images) == 1


@pytest.mark.parametrize(
    "name, required, forbidden",
    [
        ("person", {"AMQP_URI", "PERSON_DB_URI"}, {"SCORE_DB_URI"}),
        ("score", {"AMQP_URI", "SCORE_DB_URI"}, {"PERSON_DB_URI"}),
        # No service reads another's database; the gateway owns none.
        ("gateway", {"AMQP_URI", "WEB_SERVER_ADDRESS"}, {"PERSON_DB_URI", "SCORE_DB_URI"}),
        ("migrate", {"PERSON_DB_URI", "SCORE_DB_URI"}, set()),
    ],
)
def test_service_environment(services, name, required, forbidden):
    env = _as_dict(services[name].get("environment"))
    assert required <= env.keys()
    assert not forbidden & env.keys()
    for key in ("PERSON_DB_URI", "SCORE_DB_URI"):
        if key in env:
            # SQLAlchemy 2 reads a bare postgresql:// as psycopg 3.
            assert env[key].startswith("postgresql+psycopg2://")
            assert env[key].endswith("@postgres:5432/" + key.split("_")[0].lower())
    if "AMQP_URI" in env:
        assert "@rabbitmq:5672" in env["AMQP_URI"]


def test_gateway_listens_on_all_interfaces(services):
    env = _as_dict(services["gateway"]["environment"])
    assert env["WEB_SERVER_ADDRESS"] == "0.0.0.0:8000"


@pytest.mark.parametrize("name", LONG_RUNNING)
def test_long_running_service_has_a_healthcheck(services, name):
    healthcheck = services[name].get("healthcheck") or {}
    assert healthcheck.get("test"), f"{name} has no healthcheck"
    assert not healthcheck.get("disable")


@pytest.mark.parametrize("name", ("person", "score"))
def test_rpc_services_are_checked_by_rpc_ping(services, name):
    assert services[name]["healthcheck"]["test"] == ["CMD", "python", "-m", "ops.ping", name]


def test_gateway_healthcheck_hits_health_endpoint(services):
    test = " ".join(services["gateway"]["healthcheck"]["test"])
    assert "http://localhost:8000/health" in test


def test_migrate_runs_once_then_provisions_each_services_credentials(services):
    migrate = services["migrate"]
    assert _as_argv(migrate["command"]) == ["sh", "-c", "python -m ops.migrate && python -m ops.provision"]
    assert migrate["restart"] == "no"
    assert "healthcheck" not in migrate
    env = _as_dict(migrate["environment"])
    assert env["RABBITMQ_API"] == "http://rabbitmq:15672"
    passwords = {f"{s.upper()}_BROKER_PASSWORD" for s in BROKER_USERS} | {f"{s.upper()}_DB_PASSWORD" for s in DATABASES}
    assert passwords <= env.keys()


@pytest.mark.parametrize("name", NAMEKO_SERVICES)
def test_each_service_logs_in_as_itself_never_as_the_administrator(services, name):
    """The users and roles ops/provision.py makes; the administrator's credentials
    (RABBITMQ_USER, POSTGRES_PASSWORD) only in the migrate job."""
    env = _as_dict(services[name]["environment"])
    assert env["AMQP_URI"].startswith(f"amqp://{BROKER_USERS[name]}:${{{name.upper()}_BROKER_PASSWORD:?")
    for key, value in env.items():
        assert "RABBITMQ_USER" not in value and "RABBITMQ_PASSWORD" not in value, key
        assert "POSTGRES_PASSWORD" not in value, key
    if name in DATABASE_ROLES:
        uri = env[f"{name.upper()}_DB_URI"]
        assert uri.startswith(f"postgresql+psycopg2://{DATABASE_ROLES[name]}:${{{name.upper()}_DB_PASSWORD:?")


@pytest.mark.parametrize(
    "name, expected",
    [
        ("migrate", {"postgres": "service_healthy", "rabbitmq": "service_healthy"}),
        ("person", {"rabbitmq": "service_healthy", "migrate": "service_completed_successfully"}),
        ("score", {"rabbitmq": "service_healthy", "migrate": "service_completed_successfully"}),
        ("gateway", {"rabbitmq": "service_healthy", "person": "service_healthy", "score": "service_healthy"}),
    ],
)
def test_start_up_order_waits_for_health(services, name, expected):
    depends_on = services[name]["depends_on"]
    assert isinstance(depends_on, dict), "short depends_on syntax waits only for container start"
    assert {dep: spec["condition"] for dep, spec in depends_on.items()} == expected


def test_depends_on_conditions_are_satisfiable(services):
    # A service_healthy wait on a service without a healthcheck, or a
    # completed wait on one that restarts, would block `up` forever.
    for name, service in services.items():
        for dep, spec in (service.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            condition = spec["condition"]
            if condition == "service_healthy":
                assert services[dep].get("healthcheck"), f"{name} waits for {dep} health"
            elif condition == "service_completed_successfully":
                assert services[dep].get("restart") == "no", f"{name} waits for {dep} to exit"


def test_dockerfile_builds_a_non_root_python_311_image():
    dockerfile = ROOT / "Dockerfile"
    assert dockerfile.is_file()
    lines = [
        line.strip()
        for line in dockerfile.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert lines[0] == "FROM python:3.11-slim"
    assert "WORKDIR /app" in lines
    assert any("-r requirements.lock" in line for line in lines)
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")


def test_dockerignore_keeps_local_state_out_of_the_image():
    entries = set((ROOT / ".dockerignore").read_text(encoding="utf-8").split())
    assert {".git", ".venv", "**/__pycache__"} <= entries


def test_config_file_used_by_the_commands_exists():
    assert (ROOT / "config.yml").is_file()


@pytest.mark.parametrize("module", ["person.service", "score.service", "gateway.service", "ops.migrate", "ops.ping"])
def test_modules_named_in_compose_exist(module):
    path = ROOT.joinpath(*module.split("."))
    assert path.with_suffix(".py").is_file() or (path / "__init__.py").is_file(), module


CLUSTER_FILE = ROOT / "docker-compose.cluster.yml"


@pytest.fixture(scope="module")
def cluster():
    return yaml.safe_load(CLUSTER_FILE.read_text())


def test_cluster_override_matches_the_compose_schema(cluster, schema):
    assert _schema_errors(schema, cluster) == []


def test_cluster_has_three_nodes_sharing_one_config_and_cookie(cluster):
    nodes = {name: svc for name, svc in cluster["services"].items() if name.startswith("rabbitmq-")}
    assert sorted(nodes) == ["rabbitmq-1", "rabbitmq-2", "rabbitmq-3"]
    conf = (ROOT / "docker" / "rabbitmq-cluster.conf").read_text()
    for name, node in nodes.items():
        assert node["hostname"] == name
        assert f"rabbit@{name}" in conf
        assert any("rabbitmq-cluster.conf:/etc/rabbitmq/conf.d/" in v for v in node["volumes"])
        assert "RABBITMQ_ERLANG_COOKIE" in _as_dict(node["environment"])


@pytest.mark.parametrize("name", NAMEKO_SERVICES)
def test_cluster_services_can_fail_over_to_every_node(cluster, name):
    service = cluster["services"][name]
    uris = _as_dict(service["environment"])["AMQP_URI"].split(";")
    assert [uri.split("@")[1].split(":")[0] for uri in uris] == ["rabbitmq-1", "rabbitmq-2", "rabbitmq-3"]
    assert {dep: cond["condition"] for dep, cond in service["depends_on"].items()} == {
        f"rabbitmq-{i}": "service_healthy" for i in (1, 2, 3)
    }


# The cluster the fault suite breaks (harness.rabbit.RabbitCluster) is the one
# compose runs: the same node settings, the same AMQP_URI shape.

AMQP_LIST = re.compile(r"^amqp://[^;@/]+@[^;:/]+:[0-9]+/[^;]*(;amqp://[^;@/]+@[^;:/]+:[0-9]+/[^;]*){2}$")


def test_the_test_cluster_nodes_run_the_compose_cluster_settings():
    settings = [line for line in node_settings().splitlines() if line]
    conf = [line for line in COMPOSE_CLUSTER_CONF.read_text().splitlines() if line and not line.startswith("#")]
    # Everything compose sets but how nodes find each other (the tests join them by hand).
    assert settings == [line for line in conf if not line.startswith("cluster_formation.")]


def test_the_test_cluster_uri_has_the_compose_shape(cluster):
    compose_uri = _as_dict(cluster["services"]["person"]["environment"])["AMQP_URI"]
    as_compose_fills_it = re.sub(r"\$\{[^}]+\}", "guest", compose_uri).strip()
    assert AMQP_LIST.match(as_compose_fills_it), as_compose_fills_it
    nodes = [f"amqp://guest:guest@127.0.0.1:{port}/v-test" for port in (5701, 5702, 5703)]
    assert AMQP_LIST.match(cluster_uri(nodes))
    assert not AMQP_LIST.match(";".join(nodes[:2]))  # the check can fail


# --- Protected endpoints and observability -----------------------------------
#
# Each check below is a function that returns the problems it finds, so that the
# tests can run it on the real files (no problem) and on broken copies (the
# problem is found): a check that cannot fail proves nothing.

PROMETHEUS_FILE = ROOT / "docker" / "prometheus.yml"
TRAEFIK_DIR = ROOT / "docker" / "traefik"
ENV_EXAMPLE = ROOT / ".env.example"

# Services that may be on a network that is not internal, and publish ports.
GATEWAYS = ("gateway", "gateway-2")
EDGE_SERVICES = {"traefik", *GATEWAYS}
LOOPBACK_ONLY = {*GATEWAYS, "prometheus"}
BACKEND_ONLY = ("rabbitmq", "postgres", "migrate", "person", "score")

# ${NAME}, ${NAME:-default}, ${NAME:?message}, ... (Compose's interpolation forms).
VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}")
REQUIRED = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*):\?(?P<message>[^}]+)\}")
# Variable, environment and label names that hold a credential.
SECRET_NAME = re.compile(r"PASS|TOKEN|SECRET|COOKIE|_USERS?$|basicauth\.users$", re.IGNORECASE)
# Well-known default credentials that must never be written into the file.
KNOWN_DEFAULTS = re.compile(r"guest|postgres:postgres|admin:admin|\$\$?apr1\$", re.IGNORECASE)
# A URI's user:password, where either may be a whole ${...} (whose message has spaces and colons).
URI_USERINFO = re.compile(
    r"(?P<scheme>[a-z][a-z0-9+.-]*)://"
    r"(?P<user>(?:\$\{[^}]*\}|[^/;\s@:$])*)(?::(?P<password>(?:\$\{[^}]*\}|[^/;\s@$])*))?@"
)


def _variables(document):
    """(name, operator, argument) of every interpolation in a parsed compose file."""
    for _, text in _walk_strings(document):
        for match in VARIABLE.finditer(text):
            yield match.groups()


def _credential_problems(document):
    problems = []
    for name, service in (document.get("services") or {}).items():
        settings = {**_as_dict(service.get("environment")), **_as_dict(service.get("labels"))}
        for key, value in settings.items():
            where = f"{name}: {key}"
            if KNOWN_DEFAULTS.search(value):
                problems.append(f"{where}: default credential in {value!r}")
            if SECRET_NAME.search(key) and not REQUIRED.fullmatch(value):
                problems.append(f"{where}: a credential must be exactly ${{VAR:?message}}, not {value!r}")
            for uri in URI_USERINFO.finditer(value):
                user, password = uri["user"], uri["password"] or ""
                if not REQUIRED.fullmatch(password):
                    problems.append(f"{where}: password in {uri['scheme']} URI is not ${{VAR:?message}}: {value!r}")
                # A service's own user is named in ops/provision.py; the administrator's comes from .env.
                if uri["scheme"] == "amqp" and not (REQUIRED.fullmatch(user) or user in BROKER_USERS.values()):
                    problems.append(f"{where}: AMQP user is not ${{VAR:?message}} nor a service's: {value!r}")
    for variable, operator, argument in _variables(document):
        if SECRET_NAME.search(variable) and operator != ":?":
            problems.append(f"${{{variable}{operator or ''}{argument or ''}}}: a credential has no default")
    return problems


def _published_ports(service):
    """(host_ip, published, target) of every published port, short or long syntax."""
    ports = []
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            if entry.get("published") is not None:
                ports.append((entry.get("host_ip", ""), str(entry["published"]), str(entry["target"])))
            else:
                # A long-syntax port without `published` still gets a random host port.
                ports.append((entry.get("host_ip", ""), "", str(entry["target"])))
            continue
        spec = str(entry).split("/")[0]
        parts = spec.rsplit(":", 2)
        if len(parts) == 3:
            ports.append((parts[0].strip("[]"), parts[1], parts[2]))
        elif len(parts) == 2:
            ports.append(("", parts[0], parts[1]))
        else:
            ports.append(("", "", parts[0]))
    return ports


def _port_problems(document):
    problems = []
    for name, service in document["services"].items():
        if service.get("network_mode") == "host":
            problems.append(f"{name}: network_mode host bypasses the networks")
        for host_ip, published, target in _published_ports(service):
            if name == "traefik":
                continue
            if name in LOOPBACK_ONLY and host_ip == "127.0.0.1" and published:
                continue
            problems.append(f"{name}: publishes {host_ip or '*'}:{published or '?'}->{target}")
    return problems


def _service_networks(service):
    networks = service.get("networks")
    if networks is None:
        return {"default": {}}
    if isinstance(networks, list):
        return {network: {} for network in networks}
    return {network: spec or {} for network, spec in networks.items()}


def _internal(document, network):
    return bool(((document.get("networks") or {}).get(network) or {}).get("internal"))


def _network_problems(document):
    services = document["services"]
    problems = []
    for name, service in services.items():
        networks = _service_networks(service)
        outside = sorted(n for n in networks if not _internal(document, n))
        inside = sorted(n for n in networks if _internal(document, n))
        if name in EDGE_SERVICES or name == "prometheus":
            if name != "traefik" and not inside:
                problems.append(f"{name}: not on the internal network")
            if name == "traefik" and inside:
                problems.append("traefik: must not reach the internal network")
            if name == "prometheus":
                # Its non-internal network only carries the loopback port:
                # nothing else may be on it.
                for network in outside:
                    others = [o for o, s in services.items() if o != name and network in _service_networks(s)]
                    if others:
                        problems.append(f"prometheus: shares non-internal {network} with {others}")
        elif outside:
            problems.append(f"{name}: on non-internal network(s) {outside}")
        if _published_ports(service):
            # Docker publishes no port of a container on an internal network:
            # the first (highest priority) network must be one that is not.
            if not outside:
                problems.append(f"{name}: publishes a port but is only on internal networks")
            else:
                first = max(networks, key=lambda n: networks[n].get("priority", 0))
                if _internal(document, first) or len({networks[n].get("priority", 0) for n in networks}) < len(
                    networks
                ):
                    problems.append(f"{name}: its non-internal network is not explicitly first (priority)")
    return problems


def _router_problems(document):
    """No label router on the public `web` entrypoint: the public routes are
    generated (docker/traefik/dynamic.yml), so /metrics cannot slip in by label."""
    problems = []
    for name, service in document["services"].items():
        labels = _as_dict(service.get("labels"))
        for key, rule in labels.items():
            if not (key.startswith("traefik.http.routers.") and key.endswith(".rule")):
                continue
            router = key.split(".")[3]
            if labels.get(f"traefik.http.routers.{router}.entrypoints", "web") == "web":
                problems.append(f"{name}: label router {router} on the public entrypoint: {rule}")
    return problems


def _address_port(address):
    host, _, port = address.rpartition(":")
    return host, port


def _metrics_address(service_name, service):
    env = _as_dict(service.get("environment"))
    key = f"{service_name.upper()}_METRICS_ADDRESS"
    # The gateway serves /metrics on its HTTP API port.
    return env.get(key) or env.get("WEB_SERVER_ADDRESS")


def _scrape_problems(document, prometheus_config):
    services = document["services"]
    prometheus_networks = set(_service_networks(services["prometheus"]))
    problems = []
    global_interval = (prometheus_config.get("global") or {}).get("scrape_interval")
    jobs = {}
    for job in prometheus_config.get("scrape_configs") or []:
        jobs[job["job_name"]] = job
        if job.get("scrape_interval", global_interval) != "15s":
            problems.append(f"job {job['job_name']}: scrape_interval is not 15s")
        if job.get("metrics_path", "/metrics") != "/metrics":
            problems.append(f"job {job['job_name']}: metrics_path {job['metrics_path']}")
        targets = [t for static in job.get("static_configs") or [] for t in static.get("targets") or []]
        if not targets:
            problems.append(f"job {job['job_name']}: no targets")
        for target in targets:
            host, port = _address_port(target)
            if host not in services:
                problems.append(f"job {job['job_name']}: target {target} is not a compose service")
                continue
            if host.removesuffix("-2") != job["job_name"]:  # gateway-2 is one more gateway
                problems.append(f"job {job['job_name']}: scrapes {host}")
            address = _metrics_address(host, services[host])
            if not address:
                problems.append(f"{host}: no metrics address configured")
                continue
            bind_host, bind_port = _address_port(address)
            if bind_port != port:
                problems.append(f"job {job['job_name']}: target port {port}, {host} serves metrics on {address}")
            if bind_host != "0.0.0.0":
                problems.append(f"{host}: metrics on {address} cannot be reached from another container")
            if not prometheus_networks & set(_service_networks(services[host])):
                problems.append(f"prometheus shares no network with {host}")
    if set(jobs) != set(NAMEKO_SERVICES):
        problems.append(f"jobs {sorted(jobs)} are not one per service {sorted(NAMEKO_SERVICES)}")
    return problems


def _env_example():
    """{name: value} of .env.example, and the names preceded by no comment."""
    values, uncommented = {}, []
    previous = ""
    for raw in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            name, sep, value = line.partition("=")
            assert sep, f".env.example: not NAME=value: {raw!r}"
            if not previous.startswith("#"):
                uncommented.append(name)
            values[name] = value
        previous = line
    return values, uncommented


@pytest.fixture(scope="module")
def prometheus_config():
    return yaml.safe_load(PROMETHEUS_FILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def compose_files(compose, cluster):
    return {"docker-compose.yml": compose, "docker-compose.cluster.yml": cluster}


def test_no_credential_is_written_into_the_compose_files(compose_files):
    for name, document in compose_files.items():
        assert _credential_problems(document) == [], name


def _set_env(service, key, value):
    return lambda d: d["services"][service]["environment"].__setitem__(key, value)


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(_set_env("person", "AMQP_URI", "amqp://guest:guest@rabbitmq:5672/"), id="guest-amqp"),
        pytest.param(
            _set_env("person", "AMQP_URI", "amqp://${RABBITMQ_USER:?x}:hunter2@rabbitmq:5672/"), id="amqp-password"
        ),
        pytest.param(
            _set_env("person", "AMQP_URI", "amqp://nameko:${RABBITMQ_PASSWORD:?x}@rabbitmq:5672/"), id="amqp-user"
        ),
        pytest.param(
            _set_env("migrate", "PERSON_DB_URI", "postgresql+psycopg2://postgres:postgres@postgres:5432/person"),
            id="postgres-postgres",
        ),
        pytest.param(_set_env("postgres", "POSTGRES_PASSWORD", "${POSTGRES_PASSWORD:-postgres}"), id="pg-default"),
        pytest.param(_set_env("postgres", "POSTGRES_PASSWORD", "s3cret"), id="pg-literal"),
        pytest.param(_set_env("rabbitmq", "RABBITMQ_DEFAULT_PASS", "guest"), id="rabbitmq-literal"),
        pytest.param(_set_env("gateway", "API_TOKENS", "${API_TOKENS:-}"), id="tokens-optional"),
        pytest.param(_set_env("gateway", "API_TOKENS", "token-1"), id="tokens-literal"),
        pytest.param(
            lambda d: d["services"]["traefik"]["labels"].append(
                "traefik.http.middlewares.dashboard-auth.basicauth.users=admin:$$apr1$$WzE6Ep0m$$66iPBLrn8p"
            ),
            id="htpasswd-literal",
        ),
    ],
)
def test_credential_check_finds_a_literal(compose, mutate):
    broken = copy.deepcopy(compose)
    mutate(broken)
    assert _credential_problems(broken)


def test_credentials_come_from_the_same_variables(services):
    rabbitmq = _as_dict(services["rabbitmq"]["environment"])
    user = REQUIRED.fullmatch(rabbitmq["RABBITMQ_DEFAULT_USER"])["name"]
    password = REQUIRED.fullmatch(rabbitmq["RABBITMQ_DEFAULT_PASS"])["name"]
    assert (user, password) == ("RABBITMQ_USER", "RABBITMQ_PASSWORD")
    migrate = _as_dict(services["migrate"]["environment"])
    admin = URI_USERINFO.match(migrate["AMQP_URI"])
    assert (REQUIRED.fullmatch(admin["user"])["name"], REQUIRED.fullmatch(admin["password"])["name"]) == (
        user,
        password,
    )
    # Each service logs in with the password migrate (ops.provision) gave its user.
    for name in NAMEKO_SERVICES:
        uri = URI_USERINFO.match(_as_dict(services[name]["environment"])["AMQP_URI"])
        variable = REQUIRED.fullmatch(uri["password"])["name"]
        assert (uri["user"], variable) == (BROKER_USERS[name], f"{name.upper()}_BROKER_PASSWORD"), name
        assert REQUIRED.fullmatch(migrate[variable])["name"] == variable

    pg = REQUIRED.fullmatch(_as_dict(services["postgres"]["environment"])["POSTGRES_PASSWORD"])["name"]
    assert pg == "POSTGRES_PASSWORD"
    for key in ("PERSON_DB_URI", "SCORE_DB_URI"):
        uri = URI_USERINFO.match(migrate[key])
        assert uri["user"] == "postgres", key
        assert REQUIRED.fullmatch(uri["password"])["name"] == pg, key
    for name in DATABASE_ROLES:
        uri = URI_USERINFO.match(_as_dict(services[name]["environment"])[f"{name.upper()}_DB_URI"])
        variable = REQUIRED.fullmatch(uri["password"])["name"]
        assert (uri["user"], variable) == (DATABASE_ROLES[name], f"{name.upper()}_DB_PASSWORD"), name
        assert REQUIRED.fullmatch(migrate[variable])["name"] == variable

    gateway = _as_dict(services["gateway"]["environment"])
    assert REQUIRED.fullmatch(gateway["API_TOKENS"])["name"] == "API_TOKENS"
    traefik = _as_dict(services["traefik"]["labels"])
    users = traefik["traefik.http.middlewares.dashboard-auth.basicauth.users"]
    assert REQUIRED.fullmatch(users)["name"] == "TRAEFIK_DASHBOARD_USERS"


def test_person_score_and_migrate_share_one_required_personal_data_key(services):
    """An erasure's records are found by the CPF's keyed hash: person writes
    them, score and the migration (which hashes the people score knew before)
    must hash with the same key, and it must be set."""
    for name in ("person", "score", "migrate"):
        value = _as_dict(services[name]["environment"]).get("PERSONAL_DATA_HASH_KEY")
        assert value is not None, name
        assert REQUIRED.fullmatch(value)["name"] == "PERSONAL_DATA_HASH_KEY", name
    assert "PERSONAL_DATA_HASH_KEY" not in _as_dict(services["gateway"]["environment"])


def test_required_variables_say_what_to_do(compose_files):
    for document in compose_files.values():
        for name, operator, message in _variables(document):
            if operator == ":?":
                assert ".env" in message, f"${{{name}:?...}} should point at .env"


def test_only_traefik_and_loopback_ports_are_published(services, compose):
    assert _port_problems(compose) == []
    assert {(p[1], p[2]) for p in _published_ports(services["traefik"])} == {("80", "80"), ("8080", "8080")}
    assert _published_ports(services["gateway"]) == [("127.0.0.1", "8000", "8000")]
    assert _published_ports(services["gateway-2"]) == [("127.0.0.1", "8001", "8000")]
    assert _published_ports(services["prometheus"]) == [("127.0.0.1", "9090", "9090")]


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda d: d["services"]["rabbitmq"].__setitem__("ports", ["127.0.0.1:15672:15672"]), id="rabbit"),
        pytest.param(lambda d: d["services"]["postgres"].__setitem__("ports", ["5432:5432"]), id="postgres"),
        pytest.param(lambda d: d["services"]["person"].__setitem__("ports", [{"target": 9101}]), id="long-syntax"),
        pytest.param(lambda d: d["services"]["gateway"].__setitem__("ports", ["8000:8000"]), id="gateway-all-ifaces"),
        pytest.param(lambda d: d["services"]["prometheus"].__setitem__("ports", ["9090:9090"]), id="prometheus-all"),
        pytest.param(lambda d: d["services"]["score"].__setitem__("network_mode", "host"), id="host-network"),
    ],
)
def test_port_check_finds_a_published_port(compose, mutate):
    broken = copy.deepcopy(compose)
    mutate(broken)
    assert _port_problems(broken)


def test_backend_services_are_only_on_internal_networks(compose, services):
    assert _network_problems(compose) == []
    networks = compose["networks"]
    internal = {name for name, spec in networks.items() if (spec or {}).get("internal") is True}
    assert internal, "no internal network"
    for name in BACKEND_ONLY:
        assert set(_service_networks(services[name])) <= internal, name
    for name in GATEWAYS:
        assert set(_service_networks(services[name])) & internal
        assert set(_service_networks(services[name])) - internal


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda d: d["services"]["postgres"].pop("networks"), id="postgres-on-default"),
        pytest.param(lambda d: d["services"]["rabbitmq"]["networks"].append("edge"), id="rabbitmq-on-edge"),
        pytest.param(lambda d: d["networks"]["backend"].pop("internal"), id="backend-not-internal"),
        pytest.param(lambda d: d["services"]["traefik"]["networks"].append("backend"), id="traefik-inside"),
        pytest.param(lambda d: d["services"]["gateway"]["networks"].pop("edge"), id="gateway-port-unpublishable"),
        pytest.param(lambda d: d["services"]["score"].__setitem__("networks", ["monitoring"]), id="score-monitoring"),
    ],
)
def test_network_check_finds_a_service_outside(compose, mutate):
    broken = copy.deepcopy(compose)
    mutate(broken)
    assert _network_problems(broken)


def test_cluster_nodes_are_on_the_internal_network(compose, cluster):
    nodes = {name: svc for name, svc in cluster["services"].items() if name.startswith("rabbitmq-")}
    for name, node in nodes.items():
        networks = _service_networks(node)
        assert networks and all(_internal(compose, n) for n in networks), name


def test_traefik_reaches_the_gateways_over_the_named_edge_network(compose, services):
    static = yaml.safe_load((TRAEFIK_DIR / "traefik.yml").read_text(encoding="utf-8"))
    docker_network = static["providers"]["docker"]["network"]
    # With an explicit `name:` the network is called exactly that, whatever
    # the compose project is called.
    by_name = {(spec or {}).get("name"): key for key, spec in compose["networks"].items()}
    assert docker_network in by_name, "the docker provider's network is not a network's explicit name"
    edge = by_name[docker_network]
    assert not _internal(compose, edge)
    for name in GATEWAYS:
        assert edge in _service_networks(services[name])
    assert set(_service_networks(services["traefik"])) == {edge}


def test_no_label_routes_the_public_entrypoint(compose):
    # Labels route only the dashboard; /metrics and the rest are in the file (test_edge_config.py).
    assert _router_problems(compose) == []


def test_router_check_finds_a_label_router_on_the_public_entrypoint(compose):
    broken = copy.deepcopy(compose)
    broken["services"]["gateway"]["labels"] = [
        "traefik.http.routers.person.rule=Host(`person.localhost`)",
        "traefik.http.routers.person.entrypoints=web",
    ]
    assert _router_problems(broken)


def test_prometheus_is_an_optional_pinned_service(compose, services):
    prometheus = services["prometheus"]
    assert prometheus["profiles"] == ["monitoring"]
    assert re.fullmatch(r"prom/prometheus:v[23]\.\d+\.\d+", prometheus["image"])
    args = _as_argv(prometheus["command"])
    config_path = next(a.split("=", 1)[1] for a in args if a.startswith("--config.file="))
    assert f"./docker/prometheus.yml:{config_path}:ro" in prometheus["volumes"]
    data_path = next(a.split("=", 1)[1] for a in args if a.startswith("--storage.tsdb.path="))
    data_volumes = [v.split(":")[0] for v in prometheus["volumes"] if v.split(":")[1] == data_path]
    assert data_volumes and data_volumes[0] in compose["volumes"], "no named volume for Prometheus' data"
    # Nothing starts it without the profile.
    for name, service in services.items():
        assert "prometheus" not in (service.get("depends_on") or {}), name


def test_person_and_score_serve_metrics_on_their_own_ports(services):
    assert _as_dict(services["person"]["environment"])["PERSON_METRICS_ADDRESS"] == "0.0.0.0:9101"
    assert _as_dict(services["score"]["environment"])["SCORE_METRICS_ADDRESS"] == "0.0.0.0:9102"


def test_prometheus_scrapes_every_service_where_it_serves_metrics(compose, prometheus_config):
    assert prometheus_config["global"]["scrape_interval"] == "15s"
    assert _scrape_problems(compose, prometheus_config) == []


def _set_target(job_name, target):
    def mutate(document, config):
        job = next(j for j in config["scrape_configs"] if j["job_name"] == job_name)
        job["static_configs"] = [{"targets": [target]}]

    return mutate


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(_set_target("person", "person:9102"), id="wrong-port"),
        pytest.param(_set_target("score", "scorer:9102"), id="unknown-service"),
        pytest.param(_set_target("gateway", "gateway:9100"), id="gateway-not-api-port"),
        pytest.param(
            lambda d, c: d["services"]["score"]["environment"].__setitem__("SCORE_METRICS_ADDRESS", "0.0.0.0:9109"),
            id="service-moved",
        ),
        pytest.param(
            lambda d, c: d["services"]["person"]["environment"].__setitem__("PERSON_METRICS_ADDRESS", "127.0.0.1:9101"),
            id="loopback-bind",
        ),
        pytest.param(lambda d, c: c["scrape_configs"].pop(), id="missing-job"),
        pytest.param(lambda d, c: c["global"].__setitem__("scrape_interval", "1m"), id="interval"),
        pytest.param(lambda d, c: d["services"]["prometheus"].__setitem__("networks", ["monitoring"]), id="no-route"),
    ],
)
def test_scrape_check_finds_a_mismatch(compose, prometheus_config, mutate):
    document, config = copy.deepcopy(compose), copy.deepcopy(prometheus_config)
    mutate(document, config)
    assert _scrape_problems(document, config)


@pytest.mark.parametrize("name", NAMEKO_SERVICES + ("migrate",))
def test_every_variable_set_for_a_service_is_read_by_config_yml(services, name):
    # A misspelt name (PERSON_METRIC_ADDRESS) would be set and silently ignored.
    config = (ROOT / "config.yml").read_text(encoding="utf-8")
    # ops.provision (migrate's second step) reads its own variables from the environment.
    own = set(PROVISION_VARIABLES) if name == "migrate" else set()
    for key in _as_dict(services[name].get("environment")).keys() - own:
        assert "${" + key + ":" in config or "${" + key + "}" in config, f"{name}: config.yml does not read {key}"


def test_env_example_sets_every_variable_the_compose_files_use(compose_files):
    values, uncommented = _env_example()
    assert not uncommented, f".env.example: no comment before {uncommented}"
    for file_name, document in compose_files.items():
        for name, operator, _ in _variables(document):
            assert name in values, f"{file_name} uses {name}, missing from .env.example"
            if operator in (":?", "?"):
                assert values[name].strip("'\""), f"{name} is required but empty in .env.example"


def test_env_example_dashboard_users_is_a_literal_htpasswd_line():
    values, _ = _env_example()
    line = values["TRAEFIK_DASHBOARD_USERS"]
    # Single quotes: Compose takes the value literally, `$` included.
    assert re.fullmatch(r"'[^:',]+:(\$apr1\$|\$2[aby]\$|\{SHA\})[^']+'", line), line


def test_env_files_stay_out_of_git_and_the_image():
    for ignore_file in (".gitignore", ".dockerignore"):
        entries = {line.strip() for line in (ROOT / ignore_file).read_text(encoding="utf-8").splitlines()}
        assert ".env" in entries, f"{ignore_file} does not ignore .env"
    # ... but the example is versioned.
    gitignore = (ROOT / ".gitignore").read_text(encoding="utf-8").split()
    assert not {".env*", ".env.*", "*.example"} & set(gitignore)
