"""person's current state and event history, and score's rebuild from them, on real PostgreSQL.

Both services run as ``worker_factory`` workers on this session's databases;
score's ``person`` RPC proxy is person's worker behind a JSON round trip (what
the wire does to a page). The broker is not involved: tests/integration and
tests/e2e/test_rebuild.py do the same over RabbitMQ.
"""

import json
import logging
import uuid
from decimal import Decimal

import eventlet
import pytest
from nameko.testing.services import worker_factory
from sqlalchemy import text
from sqlalchemy.orm import Session

from contracts.errors import InvalidInput
from contracts.events import PERSON_EVENTS
from contracts.kinds import NAMES
from harness.cpf import cpfs
from harness.races import Gate, race
from harness.workers import TEST_HASHER, person_worker
from person.models import outbox
from reliable_events.handlers import reliable_handler
from score import rules
from score.rebuild import RebuildError, fetch_from
from score.service import ScoreService

PEOPLE = cpfs(3, start=987654321)
KIND_OF = {"income_added": "income", "asset_added": "asset", "debt_added": "debt"}


class HistoryOverJson:
    """score's ``person`` proxy: person's worker, its answer through JSON as over RPC."""

    def __init__(self, person, after_first_page=None):
        self.person = person
        self.pages = []
        self.after_first_page = after_first_page

    def event_history(self, after_position=0, limit=1000):
        return self._page(("history", after_position, limit), self.person.event_history, after_position, limit)

    def current_state(self, after=None, limit=1000):
        return self._page(("state", after, limit), self.person.current_state, after, limit)

    def _page(self, asked, method, *arguments):
        page = json.loads(json.dumps(method(*arguments)))
        self.pages.append(asked)
        if len(self.pages) == 1 and self.after_first_page:
            self.after_first_page()
        return page


@pytest.fixture
def person(db_wrappers, person_engine):
    return person_worker(person_engine, db_wrappers)


@pytest.fixture
def proxy(person):
    return HistoryOverJson(person)


@pytest.fixture
def score(db_wrappers, score_engine, proxy):
    return worker_factory(
        ScoreService,
        db=db_wrappers(score_engine),
        person=proxy,
        hasher=TEST_HASHER,
    )


def write_history(person):
    """Three people with items of every kind: 3 + 9 events."""
    for n, cpf in enumerate(PEOPLE):
        person.create_person({"cpf": cpf, "name": f"P{n}", "address": "Rua B, 2", "date_of_birth": "1980-01-02"})
        person.add_income(cpf, {"type": "salary", "value": f"{1000 + 111 * n}.50"})
        person.add_asset(cpf, {"type": "car", "value": 20000 + n})
        person.add_debt(cpf, {"value": f"{300 + n}.99"})


def rows(engine, sql, **params):
    with engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(text(sql), params)]


def history(person_engine):
    return rows(person_engine, "SELECT position, event_type, payload FROM outbox ORDER BY position")


def watermarks(score_engine):
    """Score's inbox: ``{cpf: (applied_through, applied_above)}``."""
    return {
        r["cpf"]: (r["applied_through"], r["applied_above"])
        for r in rows(score_engine, "SELECT cpf, applied_through, applied_above FROM known_person")
    }


def applied_through(events):
    """``{cpf: highest sequence}`` of history rows, each person's all applied from 1."""
    highest = {}
    for row in events:
        cpf = row["payload"]["cpf"]
        highest[cpf] = max(highest.get(cpf, 0), row["payload"]["sequence"])
    return {cpf: (n, []) for cpf, n in highest.items()}


def expected_scores(person_engine):
    """Every CPF's score from person's own rows, by the rules: the source of truth."""
    items = {cpf["cpf"]: [] for cpf in rows(person_engine, "SELECT cpf FROM person")}
    for kind in NAMES:
        for row in rows(person_engine, f"SELECT cpf, value FROM {kind}"):
            items[row["cpf"]].append((kind, row["value"]))
    return {cpf: rules.score_items(its)["score"] for cpf, its in items.items()}


def replica_scores(score, cpfs=PEOPLE):
    return {cpf: score.get_score(cpf)["score"] for cpf in cpfs}


def checkpoint(score_engine):
    found = rows(score_engine, "SELECT position, state_after FROM replica_checkpoint WHERE source = 'person'")
    return (found[0]["position"], found[0]["state_after"]) if found else None


# The replica's contents, less the times score itself stamps (when it applied).
REPLICA = {
    "known_person": "SELECT cpf, cpf_hash, applied_through, applied_above, last_sequence FROM known_person",
    "scored_item": "SELECT kind, item_id, cpf, value, event_id, occurred_at FROM scored_item",
    "erased_person": "SELECT cpf_hash, sequence FROM erased_person",
}


def replica(score_engine) -> dict:
    return {table: sorted(map(repr, rows(score_engine, sql))) for table, sql in REPLICA.items()}


def lose_replica(score_engine):
    with score_engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {', '.join(REPLICA)}, replica_checkpoint"))


def apply_live(score, person_engine):
    """Score's handlers fed person's whole history, as the broker would: the
    replica live consumption builds."""
    for row in history(person_engine):
        getattr(score, f"on_{row['event_type']}")([PERSON_EVENTS.parse(row["payload"])])


def write_history_with_erasures(person):
    """write_history, then the second person erased, created again with an
    item, and the third erased: a tombstone under a live person, and one alone."""
    write_history(person)
    person.erase_person(PEOPLE[1])
    person.create_person({"cpf": PEOPLE[1], "name": "Again", "address": "Rua D", "date_of_birth": "1990-03-04"})
    person.add_debt(PEOPLE[1], {"value": "42.00"})
    person.erase_person(PEOPLE[2])


def insert_history_event(person_engine, payload, event_type):
    """An outbox row written behind person's back (a bad producer, a bad migration)."""
    with person_engine.begin() as conn:
        return conn.execute(
            outbox.insert()
            .values(
                event_id=str(uuid.uuid4()),
                event_type=event_type,
                aggregate_key=PEOPLE[0],
                sequence=99,
                payload=payload,
            )
            .returning(outbox.c.position)
        ).scalar_one()


# --- person.event_history ------------------------------------------------------------


def test_an_empty_history(person):
    assert person.event_history() == {"events": [], "last_position": 0, "head_position": 0}


def test_history_pages_in_position_order_with_the_envelopes(person, person_engine):
    write_history(person)
    stored = history(person_engine)

    pages, after = [], 0
    while True:
        page = person.event_history(after_position=after, limit=5)
        assert page["head_position"] == stored[-1]["position"]
        if not page["events"]:
            assert page["last_position"] == after
            break
        assert page["last_position"] == page["events"][-1]["position"]
        pages.append(page["events"])
        after = page["last_position"]

    assert [len(p) for p in pages] == [5, 5, 2]
    events = [event for page in pages for event in page]
    assert [e["position"] for e in events] == [row["position"] for row in stored]
    assert [{k: v for k, v in e.items() if k != "position"} for e in events] == [row["payload"] for row in stored]
    for event in events:
        PERSON_EVENTS.parse(event)  # what score will do with it


def test_history_after_a_position_and_past_the_head(person, person_engine):
    write_history(person)
    head = history(person_engine)[-1]["position"]

    page = person.event_history(after_position=head - 2, limit=1000)
    assert [e["position"] for e in page["events"]] == [head - 1, head]
    assert person.event_history(after_position=head + 10) == {
        "events": [],
        "last_position": head + 10,
        "head_position": head,
    }


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 5001}, "limit"),
        ({"limit": "10"}, "limit"),
        ({"limit": True}, "limit"),
        ({"after_position": -1}, "after_position"),
        ({"after_position": 1.5}, "after_position"),
        ({"after_position": None}, "after_position"),
    ],
)
def test_history_rejects_bad_paging(person, arguments, field):
    with pytest.raises(InvalidInput) as caught:
        person.event_history(**arguments)
    assert set(caught.value.fields) == {field}


# --- person.current_state ------------------------------------------------------------


def test_the_state_reads_as_the_events_that_built_it(person, person_engine):
    write_history_with_erasures(person)
    published = {row["payload"]["event_id"]: row["payload"] for row in history(person_engine)}

    pages, after = [], None
    while True:
        page = person.current_state(after=after, limit=5)
        pages.append(page["events"])
        after = page["next"]
        if after is None:
            break

    # The two erasures first (the first person, 4 events, does not fit after
    # them), then each person whole: 4 events, then 2 (created again).
    assert [len(p) for p in pages] == [2, 4, 2]
    events = [PERSON_EVENTS.parse(event) for page in pages for event in page]
    assert [e["event_type"] for e in events[:2]] == ["person_erased", "person_erased"]
    assert len(events) == 2 + 4 + 2
    for event in events:
        original = PERSON_EVENTS.parse(published[event["event_id"]])
        if "value" in event["data"]:  # the row's NUMERIC(14, 2): 20000 was published, 20000.00 is read
            assert Decimal(event["data"].pop("value")) == Decimal(original["data"].pop("value"))
        assert event == original


def test_the_state_pages_hold_whole_people(person):
    write_history(person)
    first = person.current_state(limit=1)  # 4 events of the first person: more than a page, alone
    assert [e["event_type"] for e in first["events"]] == ["person_created", "income_added", "asset_added", "debt_added"]
    assert first["next"] == f"person:{PEOPLE[0]}"
    rest = person.current_state(after=first["next"], limit=5000)
    assert {e["cpf"] for e in rest["events"]} == set(PEOPLE[1:]) and rest["next"] is None


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 5001}, "limit"),
        ({"after": "person:x"}, "after"),
        ({"after": "erasure:-1"}, "after"),
        ({"after": 5}, "after"),
    ],
)
def test_the_state_rejects_bad_paging(person, arguments, field):
    with pytest.raises(InvalidInput) as caught:
        person.current_state(**arguments)
    assert set(caught.value.fields) == {field}


# --- score.rebuild_step and score.rebuild ------------------------------------------------


def test_a_lost_replica_is_rebuilt_page_by_page_from_the_state_then_the_tail(
    person, score, person_engine, score_engine
):
    write_history(person)
    head = history(person_engine)[-1]["position"]

    steps = [score.rebuild_step(0, 5)]
    while not steps[-1]["done"]:
        steps.append(score.rebuild_step(None, 5))

    # A person (4 events) a page, then the tail after the head: nothing.
    assert [(s["phase"], s["from_position"], s["position"], s["fetched"], s["applied"]) for s in steps] == [
        ("state", head, head, 4, 4),
        ("state", head, head, 4, 4),
        ("state", head, head, 4, 4),
        ("history", head, head, 0, 0),
    ]
    assert all(s["skipped"] == 0 and s["malformed"] == 0 and s["head_position"] == head for s in steps)
    assert replica_scores(score) == expected_scores(person_engine)
    assert checkpoint(score_engine) == (head, None)
    # The same watermarks as live deliveries move, so those of the same events are duplicates.
    assert watermarks(score_engine) == {cpf: (4, []) for cpf in PEOPLE}


def test_the_rebuilt_replica_is_the_one_live_consumption_builds_with_no_history_kept(
    person, score, person_engine, score_engine
):
    """Erasures included (a tombstone under a person created again, one
    alone), and none of the history left: the retention may have deleted it all."""
    write_history_with_erasures(person)
    apply_live(score, person_engine)
    live = replica(score_engine)
    assert live["erased_person"] and live["scored_item"]
    lose_replica(score_engine)
    head = history(person_engine)[-1]["position"]
    with person_engine.begin() as conn:  # as the retention deletes, and records how far
        conn.execute(text("DELETE FROM outbox"))
        conn.execute(text("INSERT INTO history_retention (source, deleted_through) VALUES ('outbox', :p)"), {"p": head})

    totals = score.rebuild(0, 3)

    assert replica(score_engine) == live
    assert totals["applied"] == totals["fetched"] == 2 + 4 + 2
    assert totals["position"] == head  # the head stays where the retention left it
    with pytest.raises(RebuildError, match=f"Events up to position {head} were deleted by the retention"):
        score.rebuild(head - 1, 3)  # a tail from below it: refused, not a silent gap
    expected = expected_scores(person_engine)
    assert replica_scores(score, expected) == expected


def test_events_applied_live_are_skipped_and_nothing_is_applied_twice(person, score, person_engine, score_engine):
    write_history(person)
    stored = history(person_engine)
    # Half of the history already came live, through the handlers.
    for row in stored[::2]:
        getattr(score, f"on_{row['event_type']}")([PERSON_EVENTS.parse(row["payload"])])

    first = score.rebuild(0, 4)
    again = score.rebuild(0, 1000)

    assert (first["fetched"], first["applied"], first["skipped"]) == (12, 6, 6)
    assert (again["fetched"], again["applied"], again["skipped"]) == (12, 0, 12)
    assert replica_scores(score) == expected_scores(person_engine)
    assert watermarks(score_engine) == applied_through(stored)
    assert rows(score_engine, "SELECT count(*) AS n FROM scored_item")[0]["n"] == 9


class RenamedScore(ScoreService):
    """score with its income handler renamed (its queue is renamed with it)."""

    on_income_added = None

    @reliable_handler(PERSON_EVENTS, "income_added")
    def on_income(self, events):
        return self._apply(events)


def test_a_renamed_handler_and_the_rebuild_still_dedupe_each_other(
    person, db_wrappers, score_engine, person_engine, proxy
):
    """The inbox is a watermark per person, not per handler: renaming a
    handler changes nothing of what the live path and a rebuild recognise."""
    renamed = worker_factory(RenamedScore, db=db_wrappers(score_engine), person=proxy, hasher=TEST_HASHER)
    write_history(person)
    incomes = [
        PERSON_EVENTS.parse(row["payload"]) for row in history(person_engine) if row["event_type"] == "income_added"
    ]
    renamed.on_income(incomes)  # live

    rebuilt = renamed.rebuild(0, 1000)

    assert rebuilt["skipped"] == len(incomes) and rebuilt["applied"] == rebuilt["fetched"] - len(incomes)
    assert rows(score_engine, "SELECT count(*) AS n FROM scored_item WHERE kind = 'income'")[0]["n"] == len(incomes)
    assert replica_scores(renamed) == expected_scores(person_engine)


def test_without_a_position_it_resumes_from_the_checkpoint(person, score, person_engine, score_engine, proxy):
    write_history(person)
    head = history(person_engine)[-1]["position"]

    first = score.rebuild_step(None, 5)  # no checkpoint yet: the start
    assert (first["phase"], first["from_position"]) == ("state", head)
    assert checkpoint(score_engine) == (head, f"person:{PEOPLE[0]}")
    person.add_debt(PEOPLE[0], {"value": "7.00"})  # after the state's head, to a person read: the tail brings it
    second = score.rebuild_step(page_size=5)
    assert (second["phase"], second["applied"]) == ("state", 4)

    totals = score.rebuild()  # the rest, from the checkpoint: the last person, then the tail
    assert (totals["from_position"], totals["position"], totals["fetched"], totals["pages"]) == (head, head + 1, 5, 2)
    assert [asked[0] for asked in proxy.pages] == ["state", "state", "state", "history"]  # 2 of them before
    assert replica_scores(score) == expected_scores(person_engine)
    # 0 is the start, not "the checkpoint": everything again, all of it skipped.
    restart = score.rebuild(0, 1000)
    assert (restart["fetched"], restart["applied"], restart["skipped"]) == (13, 0, 13)


def test_a_tail_from_a_position_reads_only_the_history(person, score, person_engine, score_engine, proxy):
    write_history(person)

    totals = score.rebuild(5, 5)

    assert (totals["from_position"], totals["position"], totals["fetched"], totals["pages"]) == (5, 12, 7, 2)
    assert [asked[0] for asked in proxy.pages] == ["history", "history"]


def test_rebuild_totals(person, score, person_engine):
    write_history(person)

    totals = score.rebuild(0, 5)

    assert {k: totals[k] for k in ("from_position", "target_position", "position", "pages", "fetched")} == {
        "from_position": 12,
        "target_position": 12,
        "position": 12,
        "pages": 4,
        "fetched": 12,
    }
    assert (totals["applied"], totals["skipped"], totals["malformed"]) == (12, 0, 0)
    assert totals["events_per_second"] > 0
    assert totals["seconds"] >= 0


@pytest.mark.parametrize("start", [0, 5], ids=["from the state", "from the history"])
def test_a_rebuild_alone_misses_no_write_that_commits_out_of_position_order(
    person, db_wrappers, score, person_engine, score_engine, start
):
    """No live consumer here (workers, no broker): person is all the replica
    gets. A write holds a position open while a later one commits; the
    rebuild, reading meanwhile, must not step past the open position (it
    would never come back to it): person's page waits for the write to end,
    for the state's first page as for the history's."""
    write_history(person)
    gate = Gate()
    slow = person_worker(person_engine, db_wrappers, session_class=gate.session_class(Session))
    if start:
        score.rebuild(0, 1000)

    def later_write_then_rebuild():
        person.add_debt(PEOPLE[1], {"value": "5.00"})  # a later position, committed first
        return score.rebuild(start, 1000)

    _, rebuilt, waited, ended_early = race(
        gate,
        lambda: slow.add_income(PEOPLE[0], {"type": "bonus", "value": "777.00"}),
        later_write_then_rebuild,
        person_engine,
    )

    stored = history(person_engine)
    assert rebuilt["fetched"] == (len(stored) if not start else len(stored) - start) == (14 if not start else 9)
    assert watermarks(score_engine) == applied_through(stored)
    assert replica_scores(score) == expected_scores(person_engine)
    assert not ended_early and waited == ["relation"], (waited, ended_early)


def test_writes_during_a_rebuild_alone_come_with_its_tail_or_the_next_one(
    person, score, person_engine, score_engine, proxy
):
    """What commits after the state's first page: to a person the pages read
    already (the tail brings it), to one they read later (the state has it),
    a new person, an erasure. Then the next rebuild, from the checkpoint,
    brings whatever came after the target; the replica is then exactly the
    one live consumption builds."""
    write_history(person)

    def more_writes():
        person.add_income(PEOPLE[0], {"type": "bonus", "value": 5000})
        person.add_income(PEOPLE[2], {"type": "bonus", "value": 6000})
        person.create_person({"cpf": "11144477735", "name": "New", "address": "Rua E", "date_of_birth": "2000-01-01"})
        person.erase_person(PEOPLE[1])

    proxy.after_first_page = more_writes

    score.rebuild(0, 5)
    person.add_debt(PEOPLE[0], {"value": "1.00"})  # after the rebuild: the next one's
    score.rebuild(None, 5)
    rebuilt = replica(score_engine)

    lose_replica(score_engine)
    apply_live(score, person_engine)
    assert rebuilt == replica(score_engine)
    expected = expected_scores(person_engine)
    assert PEOPLE[1] not in expected and "11144477735" in expected
    assert replica_scores(score, expected) == expected


def test_malformed_history_events_are_logged_counted_and_passed(person, score, person_engine, score_engine, caplog):
    write_history(person)
    cpf = PEOPLE[0]
    bad_envelope = {**PERSON_EVENTS.new("income_added", cpf, 50, {"item_id": 900, "value": "1.00"}), "cpf": "123"}
    bad_data = PERSON_EVENTS.new("income_added", cpf, 51, {"item_id": 901, "value": "-5.00"})
    good = PERSON_EVENTS.new("income_added", cpf, 52, {"item_id": 902, "value": "500.00", "type": "gift"})
    unknown = PERSON_EVENTS.new("person_renamed", cpf, 53, {"name": "X"})
    at_envelope = insert_history_event(person_engine, bad_envelope, "income_added")
    at_data = insert_history_event(person_engine, bad_data, "income_added")
    insert_history_event(person_engine, good, "income_added")
    insert_history_event(person_engine, unknown, "person_renamed")
    not_an_object = insert_history_event(person_engine, ["not", "an", "event"], event_type="income_added")

    with caplog.at_level(logging.INFO, logger="score.rebuild"):
        totals = score.rebuild(1, 1000)  # the history after the first event (the state has no bad events)

    assert totals["fetched"] == 16
    assert totals["malformed"] == 3
    assert totals["malformed_positions"] == [at_envelope, at_data, not_an_object]
    assert totals["applied"] == 12  # the 11 good ones written by person, and the good one after the bad
    assert totals["skipped"] == 1  # the type score does not consume
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 3
    for record, position in zip(errors, [at_envelope, at_data, not_an_object], strict=True):
        assert record.position == position
        assert f"position {position}" in record.getMessage()
    assert "malformed 3" in caplog.text
    scores = replica_scores(score)
    assert scores[cpf] == expected_scores(person_engine)[cpf] + rules.item_points("income", 500)


def test_bad_arguments_are_refused_before_anything_is_read(score, proxy):
    for arguments in ({"page_size": 0}, {"page_size": 5001}, {"from_position": -1}, {"from_position": "0"}):
        with pytest.raises(RebuildError):
            score.rebuild_step(**arguments)
    assert proxy.pages == []


def test_a_person_that_does_not_answer_fails_the_step():
    class Silent:
        def event_history(self, **kwargs):
            eventlet.sleep(5)

        current_state = event_history

    fetch, fetch_state = fetch_from(Silent(), timeout=0.1)
    with pytest.raises(RebuildError, match="event_history did not answer within 0.1 s"):
        fetch(0, 10)
    with pytest.raises(RebuildError, match="current_state did not answer within 0.1 s"):
        fetch_state(None, 10)
