"""Reliable events for Nameko services, written once and reused by every service.

- :mod:`.outbox`: a producer writes its event in the same transaction as the
  business row; a relay publishes committed rows with publisher confirms.
  Nothing is published for a transaction that rolls back, and nothing committed
  is lost: a row stays pending until the broker has confirmed it.
- :mod:`.inbox`: a consumer keeps a watermark per aggregate (the sequences it
  applied) in the same transaction as the effect, so a redelivered or replayed
  event changes nothing, in one row per aggregate.
- :mod:`.handlers`: a consumer's handler retries a failed event with back-off,
  then parks it in a dead-letter queue (:mod:`.deadletters`), never drops it.

The producer's envelope (its ``new``, ``parse``, ``key``) and the metrics
(:mod:`.instruments`) are handed in by the service: this package imports
nothing of the project.

Together these give "exactly once in effect": publishing is at least once,
applying is at most once per event (per aggregate and sequence).
"""
