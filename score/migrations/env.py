from ops.alembic_env import run_migrations
from score.models import ScoreBase

run_migrations(ScoreBase.metadata)
