"""The baseline the benchmark compares against: a plain Nameko pipeline, as a
typical Nameko user writes it after nameko-examples.

``POST /person/<cpf>/income`` on an ``@http`` gateway calls person over Nameko
RPC; person inserts the row, commits, then dispatches a Nameko event
(``EventDispatcher``, Nameko's defaults: persistent, confirmed); score's
``@event_handler`` inserts it into its own database. No outbox, no inbox, no
retries, no idempotency, no read-your-writes; psycopg2 made cooperative the
same way as ours (``reliable_events.green``). Run by ``make bench`` with the
same load and CPU accounting as the system (``bench/scenarios.py``), under
the same process names, so each figure has its ratio.
"""
