"""Machinery of the fault-injection suite (``tests/faults``).

- :class:`RabbitNode`: a private RabbitMQ node on ports of its own, so an outage
  here never touches the machine's shared broker.
- :class:`FaultSystem`: :class:`harness.processes.System` with the suite's short
  timings.
- :class:`Write`: one item POST that can be told apart from every other (its
  value, and an income's or asset's type, name it), with what it was answered.
- :class:`Load`: a bounded number of such writes from a few green threads.
- :class:`Invariant`: "nothing lost, nothing doubled, nothing invented", checked
  on person's rows (each write stored once if answered 201, never if answered
  4xx, at most once if 5xx), on score's replica, inbox and logs, on the
  dead-letter queues and through the API; polled until it holds (bounded),
  with the recovery time.
- :class:`Report`: the figures of each scenario, logged, printed and written as
  JSON lines to ``$FAULTS_REPORT`` when that is set.

No durations are asserted except generous "did not hang" bounds.
"""

import itertools
import json
import logging
import os
import random
import re
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import amqp
import eventlet
import requests
from nameko.amqp.publish import Publisher
from nameko.standalone.events import get_event_exchange
from nameko.standalone.rpc import ClusterRpcProxy
from sqlalchemy import text

from contracts.events import PERSON_ERASED
from contracts.kinds import BY_NAME, KINDS, NAMES
from harness.api import HTTP_TIMEOUT, person_body  # noqa: F401  (the suite takes them from here)
from harness.processes import ROOT, System
from harness.rabbit import RabbitNode as HarnessRabbitNode
from harness.rabbit import message_count
from harness.waits import wait_for
from ops.queues import event_queue, event_queues
from reliable_events.queues import dead_letter_queue_name
from score import rules

log = logging.getLogger("tests.faults")

RPC_TIMEOUT = 3
RETRY_DELAYS = (0.5, 1, 2)
INCOME_QUEUE = event_queue(BY_NAME["income"].event_type)
DEADLETTERS = str(Path(sys.executable).with_name("deadletters"))


# --- helpers -------------------------------------------------------------------------


def log_records(textual: str) -> list:
    """A service log split into records: one JSON object per line (a traceback is inside its record)."""
    return [line for line in textual.splitlines() if line.strip()]


# --- the private broker ----------------------------------------------------------------


class RabbitNode(HarnessRabbitNode):
    """The harness's private node (:mod:`harness.rabbit`), and what the suite waits for on it."""

    def __init__(self):
        super().__init__(prefix="faults")

    def wait_drained(self, amqp_uri, prefix="evt-person-", timeout=30, on_timeout=None):
        """Until every handler queue and retry queue (``prefix``..., not the dead-letter
        queues) is empty: each message was applied, skipped or parked."""
        vhost = amqp_uri.rsplit("/", 1)[1]

        def drained():
            depths = self.queue_depths(vhost)
            live = {n: c for n, c in depths.items() if n.startswith(prefix) and not n.endswith(".dead")}
            return live and not any(live.values())

        return wait_for(drained, timeout, "score's event queues to drain", 0.3, on_timeout)


# --- the services ----------------------------------------------------------------------


class FaultSystem(System):
    """The services as processes, with the suite's short timings."""

    def __init__(self, amqp_uri, db_uris, log_dir, **extra_env):
        defaults = {
            "OUTBOX_SWEEP_INTERVAL": 0.2,
            "OUTBOX_SWEEP_GRACE": 0.5,
            "EVENT_RETRY_DELAYS": json.dumps(list(RETRY_DELAYS)),
            "RPC_TIMEOUT": RPC_TIMEOUT,
            "LOG_LEVEL": "INFO",
        }
        super().__init__(amqp_uri, db_uris, log_dir, **{**defaults, **extra_env})

    def wait_gateway(self, url=None, ready=lambda body: body.get("status") == "ok", timeout=60):
        """Until ``ready(GET /health body)``, failing at once if a process died."""
        return self.wait_healthy(timeout, url, ready=lambda response: ready(response.json()))

    def create_people(self, cpf_list, url=None):
        for cpf in cpf_list:
            response = requests.post(f"{url or self.url}/person", json=person_body(cpf), timeout=HTTP_TIMEOUT)
            assert response.status_code == 201, response.text

    def add_item(self, cpf, kind, value=None, url=None) -> "Write":
        """POST one item (``value`` or a value of its own); the :class:`Write`, answered."""
        return Write(kind, cpf, url or self.url, value=None if value is None else Decimal(str(value))).send()

    @property
    def vhost(self) -> str:
        return self.env["AMQP_URI"].rsplit("/", 1)[1]

    def rpc(self, timeout=15):
        return ClusterRpcProxy({"AMQP_URI": self.env["AMQP_URI"]}, timeout=timeout)

    def deadletters(self, *args, timeout=60):
        """The ``deadletters`` console script against this system's broker."""
        return subprocess.run(
            [DEADLETTERS, *args],
            cwd=ROOT,
            env={**self.env, "PYTHONWARNINGS": "ignore"},
            capture_output=True,
            text=True,
            timeout=timeout,
        )


# --- load ------------------------------------------------------------------------------


# Every write of this test process gets a number no other write has; it is the
# whole part of a generated value (so a debt, which has no type, is told apart
# too) and an income's or asset's type.
_WRITE_NUMBERS = itertools.count(1_000_001)


@dataclass
class Write:
    """One ``POST /person/<cpf>/<kind>`` and its answer.

    201 is "accepted" (its item id recorded); 503/504 are tolerated refusals (the
    write may or may not have happened: at most once); anything else is
    recorded as unexpected. An ``invalid`` write (a negative value) must be
    refused, 422: were it stored, the invariant would find its row.
    """

    kind: str
    cpf: str
    url: str
    value: Decimal | None = None
    invalid: bool = False
    number: int = field(default_factory=lambda: next(_WRITE_NUMBERS))
    started: float = 0.0
    ended: float = 0.0
    status: int | None = None
    item_id: int | None = None
    error: str | None = None

    def __post_init__(self):
        if self.value is None:
            self.value = Decimal(self.number) + Decimal(self.number % 97) / 100
            if self.invalid:
                self.value = -self.value

    @property
    def type(self) -> str | None:
        return f"w{self.number}" if BY_NAME[self.kind].typed else None

    @property
    def key(self) -> tuple:
        """What tells this write's row apart in person's tables."""
        return (self.kind, self.cpf, self.value, self.type)

    def body(self) -> dict:
        return {"value": str(self.value)} if self.type is None else {"type": self.type, "value": str(self.value)}

    def send(self, timeout=HTTP_TIMEOUT) -> "Write":
        self.started = time.monotonic()
        try:
            response = requests.post(f"{self.url}/person/{self.cpf}/{self.kind}", json=self.body(), timeout=timeout)
            self.status = response.status_code
            if response.status_code == 201:
                self.item_id = response.json()["id"]
            else:
                self.error = response.text[:300]
        except requests.RequestException as exc:
            self.error = repr(exc)
        self.ended = time.monotonic()
        return self

    @property
    def latency(self):
        return self.ended - self.started

    def accepted(self) -> "Write":
        """This write, which must have been answered 201."""
        assert self.status == 201, f"{self.kind} for {self.cpf}: {self.status} {self.error}"
        return self


@dataclass
class Load:
    """``total`` item POSTs (at most) spread over ``cpf_list`` and ``urls`` by ``workers`` green threads."""

    urls: list
    cpf_list: list
    total: int
    workers: int = 4
    pause: float = 0.02
    seed: int = 7
    writes: list = field(default_factory=list)

    def __post_init__(self):
        self._stopped = False
        self._counter = itertools.count()
        self._pool = eventlet.GreenPool(self.workers)

    def start(self):
        for index in range(self.workers):
            self._pool.spawn_n(self._work, random.Random(self.seed * 1000 + index))
        return self

    def stop(self):
        self._stopped = True

    def wait(self, timeout=120):
        with eventlet.Timeout(timeout, AssertionError(f"load did not finish in {timeout}s")):
            self._pool.waitall()
        return self

    def _work(self, rng):
        while not self._stopped:
            number = next(self._counter)
            if number >= self.total:
                return
            kind = rng.choice(NAMES)
            cpf, url = self.cpf_list[number % len(self.cpf_list)], self.urls[number % len(self.urls)]
            # Every tenth write is one the system must refuse (422): the
            # invariant then proves too that nothing refused is stored.
            write = Write(kind, cpf, url, invalid=number % 10 == 9)
            self.writes.append(write.send())
            eventlet.sleep(self.pause)

    @property
    def accepted(self):
        return [w for w in self.writes if w.status == 201]

    @property
    def valid(self):
        """The writes meant to be accepted."""
        return [w for w in self.writes if not w.invalid]

    def accepted_count(self):
        return len(self.accepted)

    def unexpected(self):
        return [
            w for w in self.writes if w.status not in ((422,) if w.invalid else (201,)) and w.status not in (503, 504)
        ]

    def answered_as_meant(self) -> bool:
        """Every write answered as it was meant to be: 201, or 422 for an invalid one."""
        return all(w.status == (422 if w.invalid else 201) for w in self.writes)

    def statuses(self):
        return dict(Counter(str(w.status) for w in self.writes))


# --- the invariant ---------------------------------------------------------------------

# Every item of person's, whatever its kind: (kind, id, cpf, value, type or NULL).
PERSON_ITEMS = " UNION ALL ".join(
    f"SELECT '{kind.name}' AS kind, id, cpf, value, {'type' if kind.typed else 'NULL'} AS type FROM {kind.name}"
    for kind in KINDS
)
APPLIED = re.compile(r"applied event ([0-9a-f-]{36})")
HISTORY = "SELECT event_id::text, event_type, aggregate_key, sequence, published_at FROM outbox"


def inbox_view(outbox, score_conn) -> tuple[set, list]:
    """What score's inbox (a watermark per person, and the erasures'
    tombstones) says of person's history ``outbox`` (rows of ``HISTORY``):
    the event ids it counts as applied, and the positions (``cpf:sequence``)
    it counts as applied that the history does not hold: invented."""
    erased = dict(score_conn.execute(text("SELECT cpf_hash, sequence FROM erased_person")).all())
    marks, claimed = {}, set()
    for cpf, cpf_hash, through, above in score_conn.execute(
        text("SELECT cpf, cpf_hash, applied_through, applied_above FROM known_person")
    ):
        marks[cpf] = (through, set(above))
        # A person created again after an erasure: its watermark starts there.
        claimed |= {(cpf, n) for n in range(erased.get(cpf_hash, 0) + 1, through + 1)} | {(cpf, n) for n in above}
    applied, history = set(), set()
    for event_id, event_type, key, sequence, *_ in outbox:
        history.add((key, sequence))
        if event_type == PERSON_ERASED:
            done = erased.get(key, 0) >= sequence
        else:
            through, above = marks.get(key, (0, ()))
            done = sequence <= through or sequence in above
        if done:
            applied.add(event_id)
    return applied, sorted(f"{cpf}:{n}" for cpf, n in claimed - history)


DEAD_LETTER_QUEUES = [dead_letter_queue_name(queue) for queue in event_queues()]


def _queue_depth(amqp_uri, queue) -> int:
    try:
        return message_count(amqp_uri, queue)
    except amqp.exceptions.NotFound:
        return 0


def dead_letter_depths(amqp_uri) -> dict:
    """Messages in each of score's dead-letter queues (0 for one not declared yet)."""
    return {queue: _queue_depth(amqp_uri, queue) for queue in DEAD_LETTER_QUEUES}


class Invariant:
    """Nothing lost, nothing doubled, nothing invented, on both sides of the broker.

    Person: every write answered 201 is stored exactly once, as answered; one
    answered 4xx is not stored; one answered 503/504 at most once; no stored
    item that no write asked for. Score: it holds exactly person's items and
    answers the rules' score per CPF; the outbox is drained and score's inbox
    (its watermarks) counts exactly the outbox's events as applied; its logs
    show each event applied at most once (the replica's primary key would
    refuse a second row, so counting rows could never show a double apply;
    counting applications can); and no dead letter waits but those expected.
    """

    def __init__(self, person_engine, score_engine, system):
        self.person_engine = person_engine
        self.score_engine = score_engine
        self.system = system

    def snapshot(self, writes, check_api=True, dead_letters=(), tolerate=()) -> dict:
        with self.person_engine.connect() as conn:
            person_rows = conn.execute(text(PERSON_ITEMS)).all()
            people = [row[0] for row in conn.execute(text("SELECT cpf FROM person"))]
            outbox = conn.execute(text(HISTORY)).all()
        with self.score_engine.connect() as conn:
            score_rows = conn.execute(text("SELECT kind, item_id, cpf, value, event_id::text FROM scored_item")).all()
            processed_ids, invented = inbox_view(outbox, conn)

        stored = {(kind, int(item_id)): (cpf, value) for kind, item_id, cpf, value, _ in person_rows}
        ids_by_key = defaultdict(list)
        for kind, item_id, cpf, value, type_ in person_rows:
            ids_by_key[(kind, cpf, value, type_)].append(int(item_id))
        accepted_missing, stored_twice, stored_after_4xx = [], [], []
        for write in writes:
            ids = ids_by_key.get(write.key, [])
            if len(ids) > 1:
                stored_twice.append((write.kind, write.number, write.status, ids))
            elif write.status == 201 and ids != [write.item_id]:
                accepted_missing.append((write.kind, write.number, write.item_id, ids))
            elif write.status is not None and 400 <= write.status < 500 and ids:
                stored_after_4xx.append((write.kind, write.number, write.status, ids))
        asked = {write.key for write in writes}
        unrequested = [key for key in ids_by_key if key not in asked]

        scored = Counter((kind, int(item_id), cpf, value) for kind, item_id, cpf, value, _ in score_rows)
        expected = Counter((kind, item_id, cpf, value) for (kind, item_id), (cpf, value) in stored.items())
        outbox_ids = {row[0] for row in outbox}
        applied = Counter(APPLIED.findall(self.system.log_of("score")))

        snap = {
            "writes": len(writes),
            "accepted": sum(1 for write in writes if write.status == 201),
            "stored_items": len(stored),
            "scored_items": sum(scored.values()),
            "accepted_missing": accepted_missing[:20],
            "stored_twice": stored_twice[:20],
            "stored_after_4xx": stored_after_4xx[:20],
            "person_unrequested": unrequested[:20],
            "score_missing": sorted((expected - scored).keys())[:20],
            "score_extra": sorted((scored - expected).keys())[:20],
            "outbox_rows": len(outbox),
            "outbox_pending": sum(1 for row in outbox if row[4] is None),
            "processed_missing": sorted(outbox_ids - processed_ids)[:20],
            "processed_extra": invented[:20],
            "applied_twice": [event_id for event_id, count in applied.items() if count > 1][:20],
            "dead_letters": {},
            "api_mismatch": {},
        }
        db_ok = not any(
            snap[key]
            for key in (
                "accepted_missing",
                "stored_twice",
                "stored_after_4xx",
                "person_unrequested",
                "score_missing",
                "score_extra",
                "outbox_pending",
                "processed_missing",
                "processed_extra",
                "applied_twice",
            )
        )
        snap["answers_not_allowed"] = answers_not_allowed(writes, tolerate)[:20]
        db_ok = db_ok and not snap["answers_not_allowed"]
        if db_ok:
            # Exactly the dead letters expected, by event id (a count could
            # take one lost event's letter for an expected one's).
            with self.system.rpc() as rpc:
                parked = Counter(letter["event_id"] for letter in rpc.score.list_dead_letters())
            snap["dead_letters"] = dict(parked)
            db_ok = parked == Counter(dead_letters)
        if db_ok and check_api:
            for cpf in people:
                want = rules.score_items((kind, value) for (kind, _), (c, value) in stored.items() if c == cpf)
                response = requests.get(f"{self.system.url}/{cpf}/score", timeout=HTTP_TIMEOUT)
                got = response.json() if response.status_code == 200 else {"status": response.status_code}
                if got.get("score") != want["score"] or got.get("breakdown") != want["breakdown"]:
                    snap["api_mismatch"][cpf] = {"want": want, "got": got}
        snap["holds"] = db_ok and not snap["api_mismatch"]
        return snap

    def wait(self, writes, since, timeout=60, settle=1.0, dead_letters=(), tolerate=()):
        """Poll until the invariant holds over ``writes`` (every item write of the
        test, whatever it was answered), then once more after ``settle`` s, so a
        late duplicate would be seen; return (snapshot, seconds since ``since``).
        ``dead_letters``: the event ids expected to wait in the dead-letter
        queues. ``tolerate``: answers this scenario may give besides 201, 4xx,
        503 and 504 (``None``: no answer at all; 502), each at most once."""
        deadline = time.monotonic() + timeout
        snap = None
        while True:
            try:
                snap = self.snapshot(writes, dead_letters=dead_letters, tolerate=tolerate)
            except requests.RequestException as exc:
                snap = {"holds": False, "error": repr(exc)}
            if snap["holds"]:
                recovered = time.monotonic() - since
                time.sleep(settle)
                again = self.snapshot(writes, dead_letters=dead_letters, tolerate=tolerate)
                assert again["holds"], f"invariant held, then broke:\n{json.dumps(again, default=str, indent=1)}"
                return again, recovered
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"invariant did not hold within {timeout}s; lost or doubled:\n"
                    f"{json.dumps(snap, default=str, indent=1)}\n{self.system.logs()}"
                )
            time.sleep(0.2)


def answers_not_allowed(writes, tolerate=()) -> list:
    """The writes answered otherwise than a scenario allows: 201, a 4xx (an
    ``invalid`` write: 422 only), 503 or 504 (at most once), or what the
    scenario names in ``tolerate``. A timeout (``None``) or a 500 is not
    allowed by default: it would hide a lost answer behind "at most once".

    >>> answers_not_allowed([Write("debt", "1", "u", status=500)])[0][2]
    500
    >>> answers_not_allowed([Write("debt", "1", "u", status=500)], tolerate=(500,))
    []
    """
    allowed = {201, 503, 504, *tolerate}
    return [
        (w.kind, w.number, w.status, (w.error or "")[:100])
        for w in writes
        if not (
            w.status in allowed
            and not (w.invalid and w.status == 201)
            or (w.status is not None and 400 <= w.status < 500 and (w.status == 422 or not w.invalid))
        )
    ]


def lost_and_doubled(snap) -> dict:
    return {
        "lost": len(snap["accepted_missing"]) + len(snap["score_missing"]) + len(snap["processed_missing"]),
        "doubled": len(snap["stored_twice"]) + len(snap["applied_twice"]),
        "invented": len(snap["person_unrequested"])
        + len(snap["stored_after_4xx"])
        + len(snap["score_extra"])
        + len(snap["processed_extra"]),
    }


# --- raw events ------------------------------------------------------------------------


def publish_event(amqp_uri, body, routing_key, message_id=None, to_queue=None, **kwargs):
    """Publish to ``person.events`` (or straight to ``to_queue``), confirmed and
    mandatory: an unroutable message raises instead of vanishing."""
    exchange = get_event_exchange("person", {})
    publisher = Publisher(amqp_uri, use_confirms=True, mandatory=True)
    publisher.publish(
        body,
        exchange="" if to_queue else exchange,
        routing_key=to_queue or routing_key,
        message_id=message_id or str(uuid.uuid4()),
        **kwargs,
    )


def outbox_event(person_engine, event_type, item_id=None) -> dict:
    """The payload of one event from person's outbox (an item's, or the first of a type)."""
    query = "SELECT payload FROM outbox WHERE event_type = :type"
    params = {"type": event_type}
    if item_id is not None:
        query += " AND (payload -> 'data' ->> 'item_id')::bigint = :item"
        params["item"] = item_id
    with person_engine.connect() as conn:
        return conn.execute(text(query + " ORDER BY position LIMIT 1"), params).scalar_one()


# --- the report ------------------------------------------------------------------------


class Report:
    """Figures per scenario for the closing note: logged, printed (``-s``), and
    appended as a JSON line to ``$FAULTS_REPORT`` if set."""

    def __init__(self):
        self.path = os.environ.get("FAULTS_REPORT")
        if self.path:
            Path(self.path).write_text("")

    def __call__(self, scenario, **figures):
        line = json.dumps({"scenario": scenario, **figures}, default=str, sort_keys=True)
        log.info("fault scenario result: %s", line)
        print(f"\n[faults] {line}", flush=True)
        if self.path:
            with open(self.path, "a") as out:
                out.write(line + "\n")
