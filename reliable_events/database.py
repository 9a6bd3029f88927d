"""One connection pool per database per process, and nameko-sqlalchemy's
``Database`` on it.

Every extension of a service that talks to one database (the ``Database``
its workers read with, the group commit and its outbox) declares a
:class:`SharedEngine` of that database; Nameko binds one per container
(a ``SharedExtension``, as its queue consumer is), so they share one pool.
Each user reserves the connections it holds at once; the pool is
``DB_ENGINE_OPTIONS`` (sized for ``max_workers``) plus those.

nameko-sqlalchemy 1.5 names ``DB_ENGINE_OPTIONS`` but only reads engine options
from its constructor, where the config is not known yet. Without them the pool
keeps SQLAlchemy's default five connections: with ten workers, every worker
beyond five opens a fresh PostgreSQL connection (a new backend process) and
closes it again, which cost score about a tenth of its time in a catch-up.
"""

from nameko.extensions import SharedExtension
from nameko_sqlalchemy import Database as _Database
from nameko_sqlalchemy.database import DB_ENGINE_OPTIONS_KEY, DB_URIS_KEY, Session
from sqlalchemy import create_engine, text
from sqlalchemy.orm import sessionmaker


class SharedEngine(SharedExtension):
    """The engine of ``declarative_base``'s database (``DB_URIS["<service>:<Base>"]``),
    one per container. Created on first use, after every extension's
    ``setup`` has made its :meth:`reserve`; disposed when the container stops,
    after the extensions that use it."""

    def __init__(self, declarative_base):
        self.declarative_base = declarative_base
        self.reserved = 0
        self.options = {}  # beyond DB_ENGINE_OPTIONS, from a user (score: no pre-ping)
        self._engine = None

    @property
    def sharing_key(self):
        return (type(self), self.declarative_base)

    def reserve(self, connections: int) -> None:
        """Connections a user holds at once, beyond the workers'."""
        self.reserved += connections

    def get(self):
        """The engine (a method, not a property: Nameko reads every attribute
        of an extension while binding it)."""
        if self._engine is None:
            config = self.container.config
            options = {**(config.get(DB_ENGINE_OPTIONS_KEY) or {}), **self.options}
            options["pool_size"] = int(options.get("pool_size", 5)) + self.reserved
            key = f"{self.container.service_name}:{self.declarative_base.__name__}"
            self._engine = create_engine(config[DB_URIS_KEY][key], **options)
        return self._engine

    def stop(self):
        if self._engine is not None:
            self._engine.dispose()

    kill = stop


class Database(_Database):
    """nameko-sqlalchemy's ``Database(Base)`` on the database's
    :class:`SharedEngine`: its ``get_session()`` and ``session`` as ever;
    ``engine_options`` go to that engine, over ``DB_ENGINE_OPTIONS``."""

    def __init__(self, declarative_base, session_options=None, engine_options=None):
        super().__init__(declarative_base, session_options, engine_options)
        self.shared = SharedEngine(declarative_base)

    def setup(self):
        self.shared.options.update(self.engine_options)
        # Bound at start: the shared engine is made once every user reserved.
        self.Session = sessionmaker(class_=Session, **self.session_options)

    def start(self):
        self.Session.configure(bind=self.shared.get())

    def stop(self):
        pass  # the pool is the SharedEngine's, disposed after every user stopped

    kill = stop


def vacuum_unless_autovacuum(engine, table: str) -> bool:
    """VACUUM ``table`` when the server's autovacuum is off; whether it did.

    For the tables whose rows a policy deletes (the event history, the
    idempotency keys): a deleted row's space is reused only once a vacuum has
    passed, and with autovacuum off (as on some servers, this project's
    machine among them) none ever would, so the table would keep its size
    however few rows it held. With autovacuum on it does this itself, when it
    judges it worth it. A plain VACUUM takes no lock that writers wait for.
    """
    with engine.connect() as conn:
        if conn.execute(text("SHOW autovacuum")).scalar() == "on":
            return False
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text(f'VACUUM "{table}"'))
    return True
