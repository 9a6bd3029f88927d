import pytest

from harness.processes import started


@pytest.fixture(scope="module")
def system(amqp_uri, db_uris, tmp_path_factory):
    """person, score and a gateway running as processes for the module's
    tests, behind Traefik as in make run (``system.url`` is Traefik's)."""
    with started(amqp_uri, db_uris, tmp_path_factory.mktemp("logs"), edge=True) as running:
        yield running


@pytest.fixture
def api(system, clean_databases):
    """Base URL of the API (Traefik's), with empty databases."""
    return system.url
