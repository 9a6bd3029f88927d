from ops.alembic_env import run_migrations
from person.models import PersonBase

run_migrations(PersonBase.metadata)
