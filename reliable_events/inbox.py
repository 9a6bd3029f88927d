"""Idempotent consumers: a watermark per aggregate, not a row per event.

A producer numbers each aggregate's events 1, 2, 3 ... with no gap (person:
per CPF, across all its event types). So what a consumer has applied of an
aggregate is a :class:`Watermark`: the highest sequence applied with nothing
missing below it (``through``), and the few applied above a gap (``above``:
events travel on a queue per type and can overtake each other; usually
empty). An event is a duplicate exactly when its sequence is at or below
``through`` or in ``above``: exact for ever, in one row per aggregate however
many events it had, where an inbox of event ids grows by a row per event.

The consumer keeps each aggregate's watermark in a row of its own
(:func:`reliable_events.tables.watermark_columns`) and, in the transaction
that applies a batch:

1. reads the watermarks of the batch's aggregates, under a lock that orders
   every transaction touching those aggregates (score: an advisory lock per
   person, taken in key order), so that two batches never both find an event
   new;
2. :func:`claim` returns the events not applied before, and the watermarks
   that moved;
3. applies the fresh events and writes the moved watermarks back.

Because the effect and the watermark commit together, a crash before the
commit leaves neither, and the redelivery applies both. Two conditions come
with it: the consumer handles every event type of the source (its handlers
share one watermark per aggregate; score has a handler per type, and a test
checks it), and a producer never reuses a sequence (person numbers them under
the person's row lock).
"""

import logging
from dataclasses import dataclass

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Watermark:
    """What a consumer applied of one aggregate: every sequence up to
    ``through``, and those in ``above`` (sorted, each above ``through + 1``).

    ``through`` starts at 0, or where the aggregate's history starts again
    (score: after a person's erasure).
    """

    through: int = 0
    above: tuple[int, ...] = ()

    def applied(self, sequence: int) -> bool:
        return sequence <= self.through or sequence in self.above

    def with_applied(self, sequences) -> "Watermark":
        """This watermark with ``sequences`` applied too: ``through`` moves up
        over every sequence now applied with no gap below it."""
        pending = set(self.above).union(sequences)
        through = self.through
        while through + 1 in pending:
            through += 1
        return Watermark(through, tuple(sorted(s for s in pending if s > through)))

    @property
    def highest(self) -> int:
        """The highest sequence applied."""
        return self.above[-1] if self.above else self.through


def claim(marks: dict, events: list, key_of, consumer: str) -> tuple[list, dict]:
    """``(fresh, moved)``: the events of ``events`` not applied before (each
    once, in the order given), and ``{key: Watermark}`` of the aggregates
    whose watermark they move.

    ``marks``: each event's aggregate key (``key_of(event)``) -> its
    watermark, read under the lock described above. A duplicate (applied
    before, or twice in ``events``) is logged and left out.
    """
    fresh, taken = [], {}
    for event in events:
        key, sequence = key_of(event), event["sequence"]
        sequences = taken.setdefault(key, set())
        if marks[key].applied(sequence) or sequence in sequences:
            _log.info("skipped duplicate event %s %s for %s", event["event_id"], event["event_type"], consumer)
            continue
        sequences.add(sequence)
        fresh.append(event)
    return fresh, {key: marks[key].with_applied(sequences) for key, sequences in taken.items() if sequences}
