"""Read ``config.yml`` exactly as ``nameko run --config`` does (``${VAR:default}``)."""

import os

import yaml
from nameko.cli.main import setup_yaml_parser

DEFAULT_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "config.yml")


def load_config(path: str = None) -> dict:
    setup_yaml_parser()
    with open(path or os.environ.get("NAMEKO_CONFIG", DEFAULT_PATH)) as handle:
        return yaml.safe_load(handle)
