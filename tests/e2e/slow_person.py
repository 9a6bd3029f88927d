"""A stand-in "person" service that never answers in time (used by test_failures.py).

Run as its own process: ``nameko run --config <root>/config.yml slow_person`` from
this directory. Every business method sleeps ``SLOW_PERSON_SECONDS`` (default 10)
before answering; ``health`` answers at once so a test can tell the stand-in is
consuming before it measures anything.
"""

import os

import eventlet
from nameko.rpc import rpc

HANG_SECONDS = float(os.environ.get("SLOW_PERSON_SECONDS", "10"))


class SlowPersonService:
    name = "person"

    def _hang(self):
        eventlet.sleep(HANG_SECONDS)
        return {"stand_in": "slow_person", "slept": HANG_SECONDS}

    @rpc
    def create_person(self, person, idempotency_key=None, request_id=None):
        return self._hang()

    @rpc
    def get_person(self, cpf):
        return self._hang()

    @rpc
    def add_income(self, cpf, income, idempotency_key=None, request_id=None):
        return self._hang()

    @rpc
    def add_asset(self, cpf, asset, idempotency_key=None, request_id=None):
        return self._hang()

    @rpc
    def add_debt(self, cpf, debt, idempotency_key=None, request_id=None):
        return self._hang()

    @rpc
    def write_many(self, writes):  # the gateway's writes come this way (gateway/write_batches.py)
        self._hang()
        return [{"answer": {"stand_in": "slow_person"}} for _ in writes]

    @rpc
    def health(self):
        return {"service": "person", "stand_in": "slow_person"}
