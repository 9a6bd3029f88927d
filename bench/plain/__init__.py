"""The baseline the benchmark compares against: a plain Nameko pipeline, in
nameko-examples' shape, as lean as a careful engineer writes it.

``POST /person/<cpf>/income`` on an ``@http`` gateway calls person over Nameko
RPC; person validates with the system's own schemas, inserts the row (its id
and time from the INSERT's RETURNING), commits, then dispatches a Nameko event
(``EventDispatcher``, Nameko's defaults: persistent, confirmed); score's
``@event_handler`` inserts it into its own database. No outbox, no inbox, no
retries, no idempotency, no read-your-writes; psycopg2 made cooperative the
same way as ours (``reliable_events.green``). Run by ``make bench`` with the
same load and CPU accounting as the system (``bench/scenarios.py``), under
the same process names, so each figure has its ratio.
"""
