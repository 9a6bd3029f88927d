"""nameko-sqlalchemy's ``Database``, with its engine options taken from config.

nameko-sqlalchemy 1.5 names ``DB_ENGINE_OPTIONS`` but only reads engine options
from its constructor, where the config is not known yet. Without them the pool
keeps SQLAlchemy's default five connections: with ten workers, every worker
beyond five opens a fresh PostgreSQL connection (a new backend process) and
closes it again, which cost score about a tenth of its time in a catch-up.
"""

from nameko_sqlalchemy import Database as _Database
from nameko_sqlalchemy.database import DB_ENGINE_OPTIONS_KEY


class Database(_Database):
    """``Database(Base)`` whose engine gets ``DB_ENGINE_OPTIONS`` from config
    (constructor options win), so the pool can match ``max_workers``."""

    def setup(self):
        configured = self.container.config.get(DB_ENGINE_OPTIONS_KEY) or {}
        self.engine_options = {**configured, **self.engine_options}
        super().setup()
