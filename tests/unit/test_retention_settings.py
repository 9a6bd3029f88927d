"""The retention's settings are refused at start when they make no sense, with
one line that names the setting (reliable_events/retention.py)."""

import pytest

from ops.config import load_config
from reliable_events.retention import RetentionSettings, retention_settings
from reliable_events.settings import ConfigError

VALID = {
    "EVENT_HISTORY_RETENTION": 604800,
    "EVENT_HISTORY_CLEANUP_INTERVAL": 60,
    "EVENT_HISTORY_CLEANUP_BATCH": 500,
    "RPC_TIMEOUT": 5,
}


def test_config_yml_defaults_are_accepted():
    assert retention_settings(load_config(environ={})) == RetentionSettings(604800, 60, 500)


def test_a_retention_just_longer_than_the_rpc_timeout_is_accepted():
    assert retention_settings({**VALID, "EVENT_HISTORY_RETENTION": "5.5"}).retention == 5.5


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [
        ("EVENT_HISTORY_RETENTION", 0, "above 0"),
        ("EVENT_HISTORY_RETENTION", -3600, "above 0"),
        ("EVENT_HISTORY_RETENTION", "a week", "above 0"),
        ("EVENT_HISTORY_RETENTION", "", "above 0"),
        ("EVENT_HISTORY_RETENTION", None, "above 0"),
        ("EVENT_HISTORY_RETENTION", True, "above 0"),
        ("EVENT_HISTORY_RETENTION", "nan", "above 0"),
        ("EVENT_HISTORY_RETENTION", 5, "longer than RPC_TIMEOUT (5 s)"),
        ("EVENT_HISTORY_RETENTION", 4.9, "longer than RPC_TIMEOUT (5 s)"),
        ("EVENT_HISTORY_CLEANUP_INTERVAL", 0, "above 0"),
        ("EVENT_HISTORY_CLEANUP_INTERVAL", -1, "above 0"),
        ("EVENT_HISTORY_CLEANUP_INTERVAL", "often", "above 0"),
        ("EVENT_HISTORY_CLEANUP_BATCH", 0, "whole number above 0"),
        ("EVENT_HISTORY_CLEANUP_BATCH", -500, "whole number above 0"),
        ("EVENT_HISTORY_CLEANUP_BATCH", 2.5, "whole number above 0"),
        ("EVENT_HISTORY_CLEANUP_BATCH", "many", "whole number above 0"),
    ],
)
def test_a_setting_that_makes_no_sense_is_refused_in_one_line(key, value, says):
    with pytest.raises(ConfigError) as refused:
        retention_settings({**VALID, key: value})
    message = str(refused.value)
    assert message.startswith(f"{key}=") and "refused" in message and says in message
    assert "\n" not in message


def test_the_rpc_timeout_the_retention_is_measured_against_is_config_s():
    """A longer RPC_TIMEOUT moves the bound: the same retention is refused."""
    assert retention_settings({**VALID, "EVENT_HISTORY_RETENTION": 60})
    with pytest.raises(ConfigError, match=r"RPC_TIMEOUT \(60 s\)"):
        retention_settings({**VALID, "EVENT_HISTORY_RETENTION": 60, "RPC_TIMEOUT": 60})
