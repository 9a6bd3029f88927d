"""``python -m ops.provision`` refuses to start without what it needs (its real
work is in tests/faults/test_fault_permissions.py, against a broker and a database)."""

from ops.provision import PROVISION_VARIABLES, main


def test_it_names_every_missing_variable_and_exits_1(monkeypatch, capsys):
    for variable in PROVISION_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("PERSON_DB_PASSWORD", "set")
    assert main([]) == 1
    message = capsys.readouterr().err
    assert message.startswith("provision: set ") and message.count("\n") == 1
    assert all(variable in message for variable in PROVISION_VARIABLES if variable != "PERSON_DB_PASSWORD")
    assert "PERSON_DB_PASSWORD" not in message
