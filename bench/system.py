"""The system under test: a private broker node, private databases, the three services."""

import concurrent.futures
import logging
import time
import uuid
from pathlib import Path

import requests

from bench.data import person_body
from harness import databases
from harness.processes import System
from harness.rabbit import RabbitNode

log = logging.getLogger("bench")

VHOST = "bench"


class BenchSystem:
    def __init__(self, run_id: str | None = None, log_dir: str | None = None, service_env: dict | None = None):
        self.run_id = run_id or uuid.uuid4().hex[:8]
        self.log_dir = Path(log_dir or f"/tmp/bench-{self.run_id}")
        self.service_env = service_env or {}
        self.node = RabbitNode(prefix="bench", run_id=self.run_id)
        self.db_uris = None
        self.services = None
        self.amqp_uri = None
        self.baseline_amqp_uri = None
        self._conns = {}

    # --- lifecycle -----------------------------------------------------------------------

    def provision(self) -> None:
        """Start the broker node and create the databases, at the same time."""
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            node = pool.submit(self.node.start)  # only subprocesses in the thread
            self.db_uris = databases.create_databases("bench", self.run_id)
            node.result()
        self.amqp_uri = self.node.add_vhost(VHOST)
        self.baseline_amqp_uri = self.node.add_vhost("baseline")

    def start_services(self) -> float:
        started = time.monotonic()
        self.services = System(self.amqp_uri, self.db_uris, self.log_dir, **self.service_env)
        self.services.start_all(timeout=90)
        return time.monotonic() - started

    def teardown(self) -> None:
        self.close_connections()
        if self.services is not None:
            try:
                self.services.stop_all()
            except Exception:
                log.exception("stopping the services")
        try:
            self.node.stop()
        except Exception:
            log.exception("stopping the broker node")
        if self.db_uris is not None:
            try:
                databases.drop_databases(self.db_uris)
            except Exception:
                log.exception("dropping the databases")

    # --- databases -------------------------------------------------------------------------

    @property
    def person_db(self) -> str:
        return self.db_uris["person:PersonBase"]

    @property
    def score_db(self) -> str:
        return self.db_uris["score:ScoreBase"]

    def _query(self, key: str, sql: str, params=None) -> list:
        # One connection per database for the whole run (polling must not fork a
        # PostgreSQL backend each time); reopened if it broke.
        conn = self._conns.get(key)
        if conn is None or conn.closed:
            conn = self._conns[key] = databases.connect(self.db_uris[key])
        try:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                return cur.fetchall() if cur.description else []
        except Exception:
            conn.close()
            raise

    def person(self, sql: str, params=None) -> list:
        return self._query("person:PersonBase", sql, params)

    def score(self, sql: str, params=None) -> list:
        return self._query("score:ScoreBase", sql, params)

    def close_connections(self) -> None:
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()

    def db_now(self):
        """The database server's clock (both databases are on the same server)."""
        return self.person("SELECT clock_timestamp()")[0][0]

    def counts(self) -> tuple:
        """(outbox rows, pending outbox rows, events applied by score)."""
        total, pending = self.person("SELECT count(*), count(*) FILTER (WHERE published_at IS NULL) FROM outbox")[0]
        applied = self.score(databases.APPLIED_EVENTS)[0][0]
        return total, pending, applied

    def wait_quiet(self, timeout: float = 300) -> float:
        """Until every outbox row is published and applied by score (one handler per event type)."""
        started = time.monotonic()
        deadline = started + timeout
        while True:
            total, pending, applied = self.counts()
            if pending == 0 and applied >= total:
                return time.monotonic() - started
            if time.monotonic() > deadline:
                raise RuntimeError(f"not quiet after {timeout}s: outbox {total}, pending {pending}, applied {applied}")
            if self.services is not None:
                self.services.assert_running()
            time.sleep(0.2)

    # --- people -----------------------------------------------------------------------------

    def create_people(self, cpfs: list, workers: int = 8) -> None:
        """Create the people through the API (so score knows them from real events)."""
        url = f"{self.services.url}/person"

        def create(cpf):
            with requests.Session() as session:
                response = session.post(url, json=person_body(cpf), timeout=30)
            if response.status_code not in (201, 409):
                raise RuntimeError(f"POST /person {cpf}: {response.status_code} {response.text[:300]}")

        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            list(pool.map(create, cpfs))
