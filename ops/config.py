"""Read ``config.yml`` exactly as ``nameko run --config`` does (``${VAR:default}``)."""

import os
from functools import partial

import yaml
from nameko.cli.main import IMPLICIT_ENV_VAR_MATCHER, env_var_constructor

DEFAULT_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "config.yml")


class ConfigLoader(yaml.SafeLoader):
    """nameko's environment substitution on a loader of our own: nameko's
    ``setup_yaml_parser`` patches ``yaml.SafeLoader`` for the whole process,
    which would also rewrite ``${...}`` in any other YAML read later (compose)."""


ConfigLoader.add_constructor("!env_var", env_var_constructor)
ConfigLoader.add_constructor("!raw_env_var", partial(env_var_constructor, raw=True))
ConfigLoader.add_implicit_resolver("!env_var", IMPLICIT_ENV_VAR_MATCHER, None)


def load_config(path: str = None, environ: dict | None = None) -> dict:
    """``config.yml`` with each ``${VAR:default}`` read from the environment,
    or from ``environ`` instead (``{}``: config.yml's own defaults)."""
    path = path or os.environ.get("NAMEKO_CONFIG", DEFAULT_PATH)
    saved = None
    if environ is not None:
        # nameko's substitution reads os.environ itself
        saved = dict(os.environ)
        os.environ.clear()
        os.environ.update(environ)
    try:
        with open(path) as handle:
            return yaml.load(handle, Loader=ConfigLoader)  # noqa: S506 (a SafeLoader subclass)
    finally:
        if saved is not None:
            os.environ.clear()
            os.environ.update(saved)
