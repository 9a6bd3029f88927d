"""What the benchmark writes: people, item bodies, and events shaped
exactly as person writes them (``person.service`` + ``PERSON_EVENTS.new``)."""

import json

from contracts.events import PERSON_EVENTS
from harness.api import person_body as _person_body


def person_body(cpf: str) -> dict:
    return _person_body(cpf, name="Bench Person", address="Rua do Benchmark, 100", date_of_birth="1985-03-14")


def income_event(cpf: str, sequence: int, item_id: int, value: str = "1234.56") -> dict:
    """An ``income_added`` envelope as the outbox stores it."""
    return PERSON_EVENTS.new("income_added", cpf, sequence, {"item_id": item_id, "value": value, "type": "salary"})


def event_body_bytes(cpf: str = "52998224725") -> bytes:
    """The JSON body the relay publishes for one income event (its size is 'event-sized')."""
    return json.dumps(income_event(cpf, 2, 123456)).encode()


# One statement commits ``count`` income writes the way person does: for each, an
# income row, the person's sequence bumped, and an outbox row whose payload is the
# envelope person would build. Items go round-robin over the existing people.
BULK_INCOME_SQL = """
WITH people AS (
    SELECT cpf, last_sequence,
           row_number() OVER (ORDER BY cpf) - 1 AS idx,
           count(*) OVER () AS n
    FROM person
),
writes AS MATERIALIZED (
    SELECT g.i,
           p.cpf,
           p.last_sequence + 1 + g.i / p.n AS seq,
           nextval(pg_get_serial_sequence('income', 'id')) AS item_id,
           gen_random_uuid() AS event_id,
           (100 + g.i %% 9000)::numeric(14, 2) AS value
    FROM generate_series(0, %(count)s - 1) AS g(i)
    JOIN people p ON p.idx = g.i %% p.n
),
items AS (
    INSERT INTO income (id, cpf, type, value, event_id, sequence)
    SELECT item_id, cpf, 'salary', value, event_id, seq FROM writes ORDER BY i
),
bumped AS (
    UPDATE person SET last_sequence = person.last_sequence + w.k
    FROM (SELECT cpf, count(*) AS k FROM writes GROUP BY cpf) AS w
    WHERE person.cpf = w.cpf
)
INSERT INTO outbox (event_id, event_type, aggregate_key, sequence, payload)
SELECT event_id, 'income_added', cpf, seq,
       jsonb_build_object(
           'event_id', event_id::text,
           'event_type', 'income_added',
           'occurred_at', to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"'),
           'cpf', cpf,
           'sequence', seq,
           'data', jsonb_build_object('item_id', item_id, 'value', value::text, 'type', 'salary')
       )
FROM writes ORDER BY i
RETURNING position
"""
