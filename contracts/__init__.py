"""What both sides of the wire agree on, declared once; any service may import it.

- :mod:`contracts.kinds`: the kinds of item a person has (income, asset, debt),
  each declared once: its name, fields, event type and scoring rule as data;
- :mod:`contracts.events`: person's events (their source, key and types) and
  score's notices;
- :mod:`contracts.errors`: the errors raised over RPC, typed at the caller;
- :mod:`contracts.cpf`: CPF validation and its canonical form;
- :mod:`contracts.scores`: the shape of a score answer.

Nothing here does I/O; the gateway imports only this (and the reliable-events
machinery), never ``person`` or ``score``.
"""
