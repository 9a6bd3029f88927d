"""Shared fixtures: a private vhost and private databases per test session.

Nameko >= 2.13 no longer monkey-patches in its pytest plugin, so it is done
here, before anything imports socket or threading.
"""

import eventlet

eventlet.monkey_patch()  # noqa: E402  (must precede every other import)

import os  # noqa: E402
import uuid  # noqa: E402

import pytest  # noqa: E402
from nameko_sqlalchemy.database import DatabaseWrapper, Session  # noqa: E402
from sqlalchemy import create_engine, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402
from sqlalchemy.orm import sessionmaker  # noqa: E402

from harness.vhosts import create_vhost, delete_vhost  # noqa: E402
from ops.config import load_config  # noqa: E402
from ops.migrate import migrate  # noqa: E402
from person.models import PersonBase  # noqa: E402
from score.models import ScoreBase  # noqa: E402

# Every table of each database, from its models: a table added later is emptied too.
BASES = {"person:PersonBase": PersonBase, "score:ScoreBase": ScoreBase}

RUN_ID = uuid.uuid4().hex[:8]

# A test that needs PostgreSQL or RabbitMQ is one that asks for these fixtures
# (directly or through others): ``pytest -m "not db and not broker"`` runs the
# pure layers alone, with neither running.
NEEDS = {"db": {"db_uris"}, "broker": {"amqp_uri", "rabbit_node"}}


def pytest_collection_modifyitems(items):
    for item in items:
        for marker, fixtures in NEEDS.items():
            if fixtures & set(item.fixturenames):
                item.add_marker(marker)


PG_BASE = os.environ.get("TEST_PG_URI", "postgresql+psycopg2://postgres@localhost:5432/postgres")


@pytest.fixture(scope="session")
def amqp_uri():
    """A RabbitMQ vhost of this test session's own, deleted at the end."""
    uri = create_vhost()
    yield uri
    delete_vhost(uri)


def _drop_database(url):
    admin = create_engine(make_url(PG_BASE), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def db_uris():
    """Person's and score's databases for this session, migrated, dropped at the end."""
    base = make_url(PG_BASE)
    uris = {
        "person:PersonBase": base.set(database=f"person_test_{RUN_ID}"),
        "score:ScoreBase": base.set(database=f"score_test_{RUN_ID}"),
    }
    as_text = {key: url.render_as_string(hide_password=False) for key, url in uris.items()}
    migrate({"DB_URIS": as_text})
    yield as_text
    for url in uris.values():
        _drop_database(url)


@pytest.fixture(scope="session")
def base_config(amqp_uri, db_uris):
    """config.yml as the services read it, pointed at this session's vhost and databases."""
    config = load_config()
    config.update(
        AMQP_URI=amqp_uri,
        DB_URIS=db_uris,
        OUTBOX_SWEEP_INTERVAL=0.2,
        OUTBOX_SWEEP_GRACE=0.5,
        RPC_TIMEOUT=5,
        METRICS_ADDRESS={"person": "127.0.0.1:0", "score": "127.0.0.1:0"},
    )
    config.pop("LOGGING", None)
    return config


@pytest.fixture
def config(base_config):
    """A copy a test may change."""
    return {**base_config, "DB_URIS": dict(base_config["DB_URIS"])}


@pytest.fixture
def clean_databases(db_uris):
    """Empty every table before the test, so tests never see each other's rows."""
    tables = {key: ", ".join(base.metadata.tables) for key, base in BASES.items()}
    for key, names in tables.items():
        engine = create_engine(db_uris[key])
        with engine.begin() as conn:
            conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
        engine.dispose()


@pytest.fixture
def person_engine(db_uris, clean_databases):
    engine = create_engine(db_uris["person:PersonBase"])
    yield engine
    engine.dispose()


@pytest.fixture
def score_engine(db_uris, clean_databases):
    engine = create_engine(db_uris["score:ScoreBase"])
    yield engine
    engine.dispose()


@pytest.fixture
def db_wrappers():
    """``make(engine)``: nameko-sqlalchemy's ``DatabaseWrapper`` on ``engine``, for
    ``worker_factory``; closed after the test."""
    made = []

    def make(engine):
        wrapper = DatabaseWrapper(sessionmaker(bind=engine, class_=Session))
        made.append(wrapper)
        return wrapper

    yield make
    for wrapper in made:
        wrapper.close()
