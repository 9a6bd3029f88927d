import pytest

from harness.processes import started


@pytest.fixture(scope="module")
def system(amqp_uri, db_uris, tmp_path_factory):
    """person, score and gateway running as processes for the module's tests."""
    with started(amqp_uri, db_uris, tmp_path_factory.mktemp("logs")) as running:
        yield running


@pytest.fixture
def api(system, clean_databases):
    """Base URL of the gateway, with empty databases."""
    return system.url
