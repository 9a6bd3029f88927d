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

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"

NAMEKO_SERVICES = ("person", "score", "gateway")
# Everything except the one-shot migrate job must stay up and report health.
LONG_RUNNING = ("traefik", "rabbitmq", "postgres") + NAMEKO_SERVICES


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


def test_gateway_is_routed_by_host_to_port_8000(services):
    labels = _as_dict(services["gateway"].get("labels"))
    assert labels.get("traefik.enable") == "true"

    routers = {key.split(".")[3] for key in labels if key.startswith("traefik.http.routers.") and key.endswith(".rule")}
    rules = {labels[f"traefik.http.routers.{r}.rule"] for r in routers}
    assert rules == {"Host(`person.localhost`)", "Host(`score.localhost`)"}

    for router in routers:
        assert labels[f"traefik.http.routers.{router}.entrypoints"] == "web"
        target = labels[f"traefik.http.routers.{router}.service"]
        assert labels[f"traefik.http.services.{target}.loadbalancer.server.port"] == "8000"


def test_traefik_is_v3_with_a_protected_dashboard(services):
    traefik = services["traefik"]
    assert re.fullmatch(r"traefik:v3(\.\d+)*", traefik["image"])

    args = _as_argv(traefik["command"])
    assert "--providers.docker=true" in args
    assert "--providers.docker.exposedbydefault=false" in args
    assert "--entrypoints.web.address=:80" in args
    assert not any(a.startswith("--api.insecure") for a in args), "dashboard must not be insecure"

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


def test_migrate_runs_once(services):
    migrate = services["migrate"]
    assert _as_argv(migrate["command"]) == ["python", "-m", "ops.migrate"]
    assert migrate["restart"] == "no"
    assert "healthcheck" not in migrate


@pytest.mark.parametrize(
    "name, expected",
    [
        ("migrate", {"postgres": "service_healthy"}),
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
    assert "quorum_queue.initial_cluster_size = 3" in conf


@pytest.mark.parametrize("name", NAMEKO_SERVICES)
def test_cluster_services_can_fail_over_to_every_node(cluster, name):
    service = cluster["services"][name]
    uris = _as_dict(service["environment"])["AMQP_URI"].split(";")
    assert [uri.split("@")[1].split(":")[0] for uri in uris] == ["rabbitmq-1", "rabbitmq-2", "rabbitmq-3"]
    assert {dep: cond["condition"] for dep, cond in service["depends_on"].items()} == {
        f"rabbitmq-{i}": "service_healthy" for i in (1, 2, 3)
    }
