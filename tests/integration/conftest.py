"""Integration fixtures: Nameko containers on the real broker, in a vhost per test."""

import pytest
from nameko.containers import ServiceContainer

from harness.vhosts import EventTap, create_vhost, delete_vhost


@pytest.fixture
def fresh_config(config, clean_databases):
    """A vhost of this test's own: no queue bound by an earlier test can route
    (or swallow) this test's events."""
    config["AMQP_URI"] = create_vhost()
    yield config
    delete_vhost(config["AMQP_URI"])


@pytest.fixture
def run_container(fresh_config):
    """Start a service class in a real container; all are stopped at teardown."""
    containers = []

    def start(service_cls, config=None):
        container = ServiceContainer(service_cls, config or fresh_config)
        container.start()
        containers.append(container)
        return container

    yield start
    for container in containers:
        container.stop()


@pytest.fixture
def tap(fresh_config):
    tap = EventTap(fresh_config)
    yield tap
    tap.close()
