import pytest
from system import System


@pytest.fixture(scope="module")
def system(amqp_uri, db_uris, tmp_path_factory):
    """person, score and gateway running as processes for the module's tests."""
    running = System(amqp_uri, db_uris, tmp_path_factory.mktemp("logs"))
    try:
        yield running.start_all()
    finally:
        running.stop_all()


@pytest.fixture
def api(system, clean_databases):
    """Base URL of the gateway, with empty databases."""
    return system.url
