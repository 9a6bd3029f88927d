"""A lost replica rebuilt from person's history while writes go on (issue: replica rebuild).

The three services run as processes. A history of 10,000+ events is built:
a few hundred people and items over HTTP, then 10,000 incomes written
straight into person's database the way person writes them (bench's
``BULK_INCOME_SQL``: item rows, sequences and outbox rows), which the outbox
sweep publishes and score applies. Every CPF's score is recorded; score is
stopped, its database dropped, created and migrated again, and score started
on the empty replica. Then ``python -m ops.rebuild --from-start`` runs as a
process while green threads keep writing over HTTP, for existing and for new
people. Once score has caught up:

- every CPF's score equals the rules over person's rows (the source of
  truth); one not written to during the rebuild equals its score before,
  exactly; one written to equals its score before plus the points of what
  was written;
- every event of the history was applied exactly once (the inbox holds the
  history's event ids, each once, under its live handler's name);
- the command exited 0, showed its progress and printed its summary.
"""

import random
import re
import subprocess
import sys
import time
from decimal import Decimal

import eventlet
import pytest
import requests
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from bench.data import BULK_INCOME_SQL
from contracts.kinds import NAMES
from harness import databases
from harness.api import HTTP_TIMEOUT, person_body
from harness.cpf import cpfs
from harness.faults import HISTORY, inbox_view
from harness.processes import ROOT, started
from ops.migrate import migrate
from score import rules

pytestmark = pytest.mark.e2e

PEOPLE = 300
BULK_INCOMES = 10_000
ITEMS_OVER_HTTP = 200  # assets and debts, so the history has every event type
WRITERS = 2
CONCURRENCY = 16


@pytest.fixture(scope="module")
def system(amqp_uri, db_uris, tmp_path_factory):
    """The three services, logging warnings only: at INFO a line per event
    published and applied costs more CPU than the rebuild being measured."""
    with started(amqp_uri, db_uris, tmp_path_factory.mktemp("logs"), LOG_LEVEL="WARNING") as running:
        yield running


def scalar(engine, sql, **params):
    with engine.connect() as conn:
        return conn.execute(text(sql), params).scalar()


def wait_until(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what}: not reached in {timeout} s"
        eventlet.sleep(0.1)


def in_parallel(calls, size=CONCURRENCY):
    pool = eventlet.GreenPool(size)
    return list(pool.imap(lambda call: call(), calls))


def post(api, path, body):
    response = requests.post(f"{api}{path}", json=body, timeout=HTTP_TIMEOUT)
    assert response.status_code == 201, (path, response.status_code, response.text)
    return response.json()


def item_body(kind, value):
    return {"value": str(value)} if kind == "debt" else {"type": "rebuild-test", "value": str(value)}


def scores_over_http(api, people):
    def one(cpf):
        response = requests.get(f"{api}/{cpf}/score", timeout=HTTP_TIMEOUT)
        assert response.status_code == 200, (cpf, response.text)
        return cpf, response.json()["score"]

    return dict(in_parallel([lambda cpf=cpf: one(cpf) for cpf in people]))


def scores_by_rules(person_engine):
    """Every CPF's score from person's own rows, by score/rules.py."""
    items = {}
    with person_engine.connect() as conn:
        for (cpf,) in conn.execute(text("SELECT cpf FROM person")):
            items[cpf] = []
        for kind in NAMES:
            for cpf, value in conn.execute(text(f"SELECT cpf, value FROM {kind}")):
                items[cpf].append((kind, value))
    return {cpf: rules.score_items(found)["score"] for cpf, found in items.items()}


def caught_up(person_engine, score_engine):
    """Every event of the history is published and counted applied by score's inbox."""
    pending = scalar(person_engine, "SELECT count(*) FROM outbox WHERE published_at IS NULL")
    history = scalar(person_engine, "SELECT count(*) FROM outbox")
    return pending == 0 and scalar(score_engine, databases.APPLIED_EVENTS) == history


def recreate_score_database(db_uris):
    """DROP score's database (this session's own), then create and migrate it again."""
    url = make_url(db_uris["score:ScoreBase"])
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE "{url.database}" WITH (FORCE)'))
    admin.dispose()
    migrate({"DB_URIS": db_uris}, services=("score",))


class Writers:
    """Green threads writing over HTTP until stopped: items for existing people
    and new people with items of their own. Records each write answered 201."""

    def __init__(self, api, existing, new_people):
        self.api = api
        self.targets = list(existing)
        self.new_people = list(new_people)
        self.items = []  # (cpf, kind, Decimal value)
        self.created = []
        self.errors = []
        self.stopping = False
        self.threads = [eventlet.spawn(self._write, random.Random(n)) for n in range(WRITERS)]

    def _write(self, rng):
        while not self.stopping:
            try:
                if self.new_people and rng.random() < 0.1:
                    cpf = self.new_people.pop()
                    post(self.api, "/person", person_body(cpf, name="New during rebuild"))
                    self.created.append(cpf)
                    self.targets.append(cpf)
                    continue
                cpf = rng.choice(self.targets)
                kind = rng.choice(NAMES)
                value = Decimal(rng.randint(100, 5_000_000)) / 100
                answer = post(self.api, f"/person/{cpf}/{kind}", item_body(kind, value))
                self.items.append((cpf, kind, Decimal(answer["value"])))
            except Exception as exc:  # reported by the test, not lost in a green thread
                self.errors.append(repr(exc))
                eventlet.sleep(0.05)

    def stop(self):
        self.stopping = True
        for thread in self.threads:
            thread.wait()


def test_a_dropped_replica_is_rebuilt_while_writes_go_on(system, api, db_uris, tmp_path):
    person_engine = create_engine(db_uris["person:PersonBase"])
    score_engine = create_engine(db_uris["score:ScoreBase"])
    people = cpfs(PEOPLE + 100, start=246813579)
    existing, newcomers = people[:PEOPLE], people[PEOPLE:]

    # --- a history of 10,000+ events, applied live ---------------------------------------
    in_parallel([lambda cpf=cpf: post(api, "/person", person_body(cpf)) for cpf in existing])
    kinds = [("asset", "debt")[n % 2] for n in range(ITEMS_OVER_HTTP)]
    in_parallel(
        [
            lambda n=n, kind=kind: post(api, f"/person/{existing[n]}/{kind}", item_body(kind, 1000 + n))
            for n, kind in enumerate(kinds)
        ]
    )
    conn = databases.connect(db_uris["person:PersonBase"])
    try:
        with conn.cursor() as cur:
            cur.execute(BULK_INCOME_SQL, {"count": BULK_INCOMES})
    finally:
        conn.close()
    history = scalar(person_engine, "SELECT count(*) FROM outbox")
    assert history >= 10_000
    wait_until(lambda: caught_up(person_engine, score_engine), 60, "score applying the history live")
    before = scores_over_http(api, existing)
    assert before == scores_by_rules(person_engine)

    # --- the replica is lost ---------------------------------------------------------------------
    system.stop("score.1")
    score_engine.dispose()
    recreate_score_database(db_uris)
    assert scalar(score_engine, "SELECT count(*) FROM known_person") == 0
    system.start("score")
    system.wait_healthy()

    # --- rebuilt from the start while writes go on ------------------------------------------
    writers = Writers(api, existing, newcomers)
    wait_until(lambda: len(writers.items) >= 20, 20, "writes before the rebuild starts")
    out, err = tmp_path / "rebuild.out", tmp_path / "rebuild.err"
    with open(out, "w") as stdout, open(err, "w") as stderr:
        cli = subprocess.Popen(
            [sys.executable, "-m", "ops.rebuild", "--from-start", "--page-size", "1000"],
            cwd=ROOT,
            env=system.env,
            stdout=stdout,
            stderr=stderr,
        )
        started = time.monotonic()
        while cli.poll() is None:  # a green wait: the writers go on meanwhile
            assert time.monotonic() - started < 60, "the rebuild did not end in 60 s"
            eventlet.sleep(0.1)
    written_during = len(writers.items)
    eventlet.sleep(0.5)  # a few writes after the rebuild ended too
    writers.stop()
    output, progress = out.read_text(), err.read_text()
    assert cli.returncode == 0, f"stdout:\n{output}\nstderr:\n{progress}"
    assert not writers.errors, writers.errors[:5]
    assert written_during > 20 and writers.created, "the writes did not overlap the rebuild"

    wait_until(lambda: caught_up(person_engine, score_engine), 60, "score catching up after the rebuild")

    # --- the command's output ------------------------------------------------------------------
    summary = re.search(
        r"history to position (\d+): (\d+) events, (\d+) applied, (\d+) skipped .*, (\d+) malformed, "
        r"in ([\d.]+) s \((\d+) events/s\)",
        output,
    )
    assert summary, output
    end, fetched, applied, skipped, malformed, seconds, rate = summary.groups()
    assert int(end) >= history and int(fetched) >= history and int(malformed) == 0
    assert int(applied) + int(skipped) == int(fetched)
    # The history before the drop can only come from the rebuild; what was
    # written meanwhile may come in the state and again in the history's
    # tail, and is skipped whenever the live path or the other applied it first.
    assert int(applied) >= history
    assert int(skipped) <= 2 * (len(writers.items) + len(writers.created))
    assert "rebuild: state" in progress and "rebuild: history" in progress and "events/s" in progress, progress
    print(
        f"\nrebuild: {fetched} events ({applied} applied, {skipped} already applied live) in {seconds} s, "
        f"{rate} events/s; {len(writers.items)} items and {len(writers.created)} people written meanwhile"
    )

    # --- the scores ----------------------------------------------------------------------------
    truth = scores_by_rules(person_engine)
    after = scores_over_http(api, existing + writers.created)
    assert after == truth
    gained = {}
    for cpf, kind, value in writers.items:
        gained[cpf] = gained.get(cpf, 0) + rules.item_points(kind, value)
    untouched = [cpf for cpf in existing if cpf not in gained]
    assert untouched, "every person was written to: nothing shows the rebuild alone"
    assert {cpf: after[cpf] for cpf in untouched} == {cpf: before[cpf] for cpf in untouched}
    for cpf in existing:
        assert after[cpf] == before[cpf] + gained.get(cpf, 0), cpf
    for cpf in writers.created:
        assert after[cpf] == gained.get(cpf, 0), cpf

    # --- each event applied once -----------------------------------------------------------
    with person_engine.connect() as conn:
        outbox = conn.execute(text(HISTORY)).all()
    with score_engine.connect() as conn:
        applied, invented = inbox_view(outbox, conn)
        items = conn.execute(text("SELECT count(*) FROM scored_item")).scalar()
    assert applied == {row[0] for row in outbox} and invented == []
    assert items == scalar(
        person_engine,
        "SELECT (SELECT count(*) FROM income) + (SELECT count(*) FROM asset) + (SELECT count(*) FROM debt)",
    )
    assert scalar(score_engine, "SELECT position FROM replica_checkpoint WHERE source = 'person'") == int(end)

    person_engine.dispose()
    score_engine.dispose()
