"""Reliable events for Nameko services, written once and reused by every service.

- :mod:`.outbox`: a producer writes its event in the same transaction as the
  business row; a relay publishes committed rows with publisher confirms.
  Nothing is published for a transaction that rolls back, and nothing committed
  is lost: a row stays pending until the broker has confirmed it.
- :mod:`.inbox`: a consumer records each applied ``event_id`` in the same
  transaction as the effect, so a redelivered or replayed event changes nothing.
- :mod:`.envelope`: the shape every event has on the wire.

Together these give "exactly once in effect": publishing is at least once,
applying is at most once per event id.
"""
