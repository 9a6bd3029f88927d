"""The score service's handlers and RPC on a real PostgreSQL.

Most tests use ``worker_factory`` with nameko-sqlalchemy's ``DatabaseWrapper`` and
score's real inbox (the watermarks in ``known_person``); the last one starts a real container to prove the real
dependency providers wire up.
"""

import logging
from decimal import Decimal

import pytest
from nameko.containers import ServiceContainer
from nameko.testing.services import entrypoint_hook, worker_factory
from sqlalchemy import text

from contracts.envelope import MalformedEvent
from contracts.errors import InvalidInput, ScoreNotFound
from contracts.events import PERSON_EVENTS
from harness.workers import TEST_HASHER
from score.service import ScoreService

CPF = "52998224725"


def event(event_type, sequence, data, cpf=CPF):
    """An event as a handler receives it: built by the producer, parsed by the entrypoint."""
    return PERSON_EVENTS.parse(PERSON_EVENTS.new(event_type, cpf, sequence, data))


def person_created(sequence=1, cpf=CPF):
    return event(
        "person_created",
        sequence,
        {"name": "abc", "address": "abc", "date_of_birth": "2019-06-15"},
        cpf,
    )


def item_added(kind, sequence, item_id, value, cpf=CPF, item_type=None):
    data = {"item_id": item_id, "value": value}
    if kind != "debt":
        data["type"] = item_type or "renting"
    return event(f"{kind}_added", sequence, data, cpf)


SEED_EVENTS = [
    ("on_person_created", person_created()),
    ("on_income_added", item_added("income", 2, 1, "1000.00")),
    ("on_asset_added", item_added("asset", 3, 1, "100000.00", item_type="apartment")),
    ("on_debt_added", item_added("debt", 4, 1, "1000.00")),
]


@pytest.fixture
def service(db_wrappers, score_engine):
    return worker_factory(
        ScoreService, db=db_wrappers(score_engine), hasher=TEST_HASHER, config={"READ_YOUR_WRITES_TIMEOUT": 2}
    )


def rows(engine, sql):
    with engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(text(sql))]


def count(engine, table):
    return rows(engine, f"SELECT count(*) AS n FROM {table}")[0]["n"]


def watermarks(engine):
    """Score's inbox: ``{cpf: (applied_through, applied_above)}``."""
    return {
        r["cpf"]: (r["applied_through"], r["applied_above"])
        for r in rows(engine, "SELECT cpf, applied_through, applied_above FROM known_person")
    }


def apply(service, handler, *events):
    """Call a batch handler with ``events`` as one batch."""
    getattr(service, handler)(list(events))


def test_seed_events_give_the_seed_score(service):
    for handler, evt in SEED_EVENTS:
        apply(service, handler, evt)

    score = service.get_score(CPF)

    assert score["cpf"] == CPF
    assert score["score"] == 4970
    assert score["breakdown"] == {"income": 20, "asset": 5000, "debt": -50}
    assert score["items"] == {"income": 1, "asset": 1, "debt": 1}
    assert score["last_sequence"] == 4
    assert isinstance(score["updated_at"], str)


def test_get_score_accepts_a_punctuated_cpf(service):
    apply(service, "on_person_created", person_created())
    apply(service, "on_income_added", item_added("income", 2, 1, "1000.00"))

    assert service.get_score("529.982.247-25")["score"] == 20


def test_events_are_recorded_in_the_inbox_with_the_replica(service, score_engine):
    for handler, evt in SEED_EVENTS:
        apply(service, handler, evt)

    # one row for the person, whatever its number of events: all up to 4 applied
    assert watermarks(score_engine) == {CPF: (4, [])}

    items = rows(
        score_engine,
        "SELECT kind, item_id, cpf, value, event_id::text AS event_id FROM scored_item ORDER BY kind",
    )
    assert [(r["kind"], r["item_id"], r["cpf"], r["value"]) for r in items] == [
        ("asset", 1, CPF, Decimal("100000.00")),
        ("debt", 1, CPF, Decimal("1000.00")),
        ("income", 1, CPF, Decimal("1000.00")),
    ]
    assert {r["event_id"] for r in items} == {evt["event_id"] for _, evt in SEED_EVENTS[1:]}


@pytest.mark.parametrize(("handler", "evt"), SEED_EVENTS, ids=[h for h, _ in SEED_EVENTS])
def test_the_same_event_twice_changes_nothing(service, score_engine, caplog, handler, evt):
    for other_handler, other in SEED_EVENTS:
        apply(service, other_handler, other)
    before = service.get_score(CPF)
    inbox_before = watermarks(score_engine)
    items_before = count(score_engine, "scored_item")

    with caplog.at_level(logging.INFO, logger="reliable_events.inbox"):
        apply(service, handler, dict(evt))

    after = service.get_score(CPF)
    assert {k: v for k, v in after.items() if k != "updated_at"} == {
        k: v for k, v in before.items() if k != "updated_at"
    }
    assert after["updated_at"] == before["updated_at"]  # not even touched
    assert watermarks(score_engine) == inbox_before
    assert count(score_engine, "scored_item") == items_before
    assert f"skipped duplicate event {evt['event_id']}" in caplog.text


def test_a_new_event_for_the_same_item_kind_is_applied(service):
    """The dedupe is by sequence, not by kind: a second income counts."""
    for handler, evt in SEED_EVENTS:
        apply(service, handler, evt)

    apply(service, "on_income_added", item_added("income", 5, 2, "50.00", item_type="salary"))

    score = service.get_score(CPF)
    assert score["breakdown"]["income"] == 21
    assert score["items"]["income"] == 2
    assert score["last_sequence"] == 5


def test_item_before_person_created_makes_the_cpf_known(service):
    apply(service, "on_income_added", item_added("income", 2, 1, "1000.00"))

    early = service.get_score(CPF)
    assert early["score"] == 20
    assert early["last_sequence"] == 2

    apply(service, "on_person_created", person_created(sequence=1))

    late = service.get_score(CPF)
    assert late["score"] == 20
    assert late["last_sequence"] == 2  # the highest sequence seen, not the last applied


def test_events_in_any_order_give_the_same_score(service):
    for handler, evt in reversed(SEED_EVENTS):
        apply(service, handler, evt)

    score = service.get_score(CPF)

    assert score["score"] == 4970
    assert score["last_sequence"] == 4


def test_scores_are_per_cpf(service):
    other = "01234567890"
    for handler, evt in SEED_EVENTS:
        apply(service, handler, evt)
    apply(service, "on_person_created", person_created(cpf=other))
    apply(service, "on_debt_added", item_added("debt", 2, 2, "40.00", cpf=other))

    assert service.get_score(other)["score"] == -2
    assert service.get_score(CPF)["score"] == 4970


def test_applied_sequence_is_the_gapless_prefix(service):
    # income (2) and debt (4) arrive; the asset (3) is still on its way
    apply(service, "on_income_added", item_added("income", 2, 1, "1000.00"))
    apply(service, "on_debt_added", item_added("debt", 4, 1, "1000.00"))
    assert service.get_score(CPF)["applied_sequence"] == 0  # person_created (1) missing

    apply(service, "on_person_created", person_created())
    score = service.get_score(CPF)
    assert (score["applied_sequence"], score["last_sequence"]) == (2, 4)

    apply(service, "on_asset_added", item_added("asset", 3, 1, "100000.00", item_type="apartment"))
    assert service.get_score(CPF)["applied_sequence"] == 4


def wait_to_read(service, cpf, sequence):
    """A read-your-writes read short of ``sequence``: score registers it."""
    try:
        assert service.get_score(cpf, min_sequence=sequence)["applied_sequence"] < sequence
    except ScoreNotFound:
        pass  # not known yet: registered all the same


def test_applied_events_are_announced_once_per_batch_and_duplicates_are_not(service):
    other_cpf = "11144477735"
    wait_to_read(service, CPF, 1)
    wait_to_read(service, other_cpf, 1)
    created = person_created()
    other = person_created(cpf=other_cpf)
    apply(service, "on_person_created", created, other)

    service.notify.assert_called_once_with("replica_advanced", {"cpfs": [other_cpf, CPF]})

    service.notify.reset_mock()
    apply(service, "on_person_created", created)
    service.notify.assert_not_called()


def test_only_a_person_a_read_waits_for_is_announced(service, db_wrappers, score_engine):
    """No read waiting, no notice: a write costs no broker message of score's
    own. A read registers for its person, for READ_YOUR_WRITES_TIMEOUT."""
    other_cpf = "11144477735"
    apply(service, "on_person_created", person_created(), person_created(cpf=other_cpf))
    service.notify.assert_not_called()

    wait_to_read(service, CPF, 2)
    incomes = [item_added("income", 2, 1, "10.00"), item_added("income", 2, 2, "5.00", other_cpf)]
    apply(service, "on_income_added", *incomes)
    service.notify.assert_called_once_with("replica_advanced", {"cpfs": [CPF]})

    expired = worker_factory(
        ScoreService, db=db_wrappers(score_engine), hasher=TEST_HASHER, config={"READ_YOUR_WRITES_TIMEOUT": 0}
    )
    wait_to_read(expired, other_cpf, 3)
    apply(expired, "on_income_added", item_added("income", 3, 3, "5.00", other_cpf))
    expired.notify.assert_not_called()  # the read's bound ran out: nobody waits


@pytest.mark.parametrize("bad", [0, -1, "2", 1.5, True])
def test_a_bad_min_sequence_is_invalid_input_and_registers_nothing(service, score_engine, bad):
    with pytest.raises(InvalidInput):
        service.get_score(CPF, min_sequence=bad)
    assert count(score_engine, "waiting_read") == 0


def test_a_failed_announcement_keeps_the_applied_events(service, caplog):
    wait_to_read(service, CPF, 1)
    service.notify.side_effect = ConnectionError("broker gone")

    with caplog.at_level(logging.WARNING):
        apply(service, "on_person_created", person_created())

    assert service.get_score(CPF)["applied_sequence"] == 1
    assert "could not announce 1 advanced CPFs" in caplog.text


def test_unknown_cpf_raises_score_not_found(service):
    with pytest.raises(ScoreNotFound, match=CPF):
        service.get_score(CPF)


def test_unknown_cpf_raises_even_when_others_are_known(service):
    apply(service, "on_person_created", person_created(cpf="01234567890"))

    with pytest.raises(ScoreNotFound):
        service.get_score(CPF)


def test_known_cpf_without_items_scores_zero(service):
    apply(service, "on_person_created", person_created())

    score = service.get_score(CPF)

    assert score["score"] == 0
    assert score["breakdown"] == {"income": 0, "asset": 0, "debt": 0}
    assert score["items"] == {"income": 0, "asset": 0, "debt": 0}
    assert score["last_sequence"] == 1


def test_handler_failure_rolls_back_the_inbox_claim(service, score_engine):
    """A failed effect leaves no claim behind, so a retry of the same event applies it."""
    apply(service, "on_person_created", person_created())
    broken = item_added("income", 2, 1, "not money")

    with pytest.raises(Exception):  # noqa: B017  (any error from Decimal is fine)
        apply(service, "on_income_added", broken)

    assert watermarks(score_engine) == {CPF: (1, [])}
    assert count(score_engine, "scored_item") == 0

    fixed = {**broken, "data": {**broken["data"], "value": "1000.00"}}
    apply(service, "on_income_added", fixed)
    assert service.get_score(CPF)["score"] == 20


# --- batches ------------------------------------------------------------------


def test_a_batch_applies_every_event_once(service, score_engine):
    other = "01234567890"
    incomes = [item_added("income", 2 + i, 1 + i, "100.00") for i in range(5)]
    incomes.append(item_added("income", 2, 10, "50.00", cpf=other))

    apply(service, "on_income_added", *incomes)

    assert service.get_score(CPF)["breakdown"]["income"] == 10  # 5 x floor(100 / 50)
    assert service.get_score(CPF)["last_sequence"] == 6  # the highest of the batch
    assert service.get_score(other)["score"] == 1
    # person_created (1) of either has not arrived: every item waits above the gap
    assert watermarks(score_engine) == {CPF: (0, [2, 3, 4, 5, 6]), other: (0, [2])}
    assert count(score_engine, "scored_item") == 6


def test_a_batch_with_a_duplicate_inside_and_one_seen_before(service, score_engine, caplog):
    """Duplicates within one batch and across batches are each applied once."""
    first = item_added("income", 2, 1, "1000.00")
    second = item_added("income", 3, 2, "500.00")
    apply(service, "on_income_added", first)

    with caplog.at_level(logging.INFO, logger="reliable_events.inbox"):
        apply(service, "on_income_added", dict(first), second, dict(second))

    assert service.get_score(CPF)["breakdown"]["income"] == 30  # 20 + 10, each once
    assert count(score_engine, "scored_item") == 2
    assert caplog.text.count(f"skipped duplicate event {first['event_id']}") == 1
    assert caplog.text.count(f"skipped duplicate event {second['event_id']}") == 1


def test_a_batch_with_one_malformed_event_writes_nothing(service, score_engine):
    """The whole batch rolls back (the entrypoint then runs each event alone)."""
    good = item_added("income", 2, 1, "1000.00")
    bad = item_added("income", 3, 2, "-5.00")

    with pytest.raises(MalformedEvent, match=bad["event_id"]):
        apply(service, "on_income_added", good, bad)

    assert count(score_engine, "scored_item") == 0
    assert count(score_engine, "known_person") == 0  # the inbox's rows too


# --- a real container --------------------------------------------------------


def test_real_container_wires_database_and_inbox(config, score_engine):
    container = ServiceContainer(ScoreService, config)
    container.start()
    try:
        with entrypoint_hook(container, "get_score") as get_score:
            with pytest.raises(ScoreNotFound):
                get_score(CPF)

        for handler, evt in SEED_EVENTS:
            with entrypoint_hook(container, handler) as handle:
                handle([evt])

        with entrypoint_hook(container, "get_score") as get_score:
            score = get_score("529.982.247-25")
    finally:
        container.stop()

    assert score["score"] == 4970
    assert score["breakdown"] == {"income": 20, "asset": 5000, "debt": -50}
    assert watermarks(score_engine) == {CPF: (4, [])}


def test_an_erasure_held_back_keeps_what_the_person_created_again_had_scored(service, score_engine):
    """A person erased (sequence 3) and created again (4, 5): the erasure
    travels on a queue of its own, and a retry may hold it back while the new
    person's events are applied. Applied then, it deletes the erased person's
    items and leaves the new one's, and the watermark goes on past it."""
    cpf_hash = TEST_HASHER.hash(CPF)
    apply(service, "on_person_created", person_created(1))
    apply(service, "on_income_added", item_added("income", 2, 1, "1000.00"))
    apply(service, "on_person_created", person_created(4))  # created again, after the erasure
    apply(service, "on_debt_added", item_added("debt", 5, 2, "400.00"))

    erasure = PERSON_EVENTS.parse(PERSON_EVENTS.new("person_erased", cpf_hash, 3, {}))
    apply(service, "on_person_erased", erasure)

    assert rows(score_engine, "SELECT kind, item_id, sequence FROM scored_item") == [
        {"kind": "debt", "item_id": 2, "sequence": 5}
    ]
    assert watermarks(score_engine) == {CPF: (5, [])}
    assert rows(score_engine, "SELECT cpf_hash, sequence FROM erased_person") == [{"cpf_hash": cpf_hash, "sequence": 3}]
    assert service.get_score(CPF, min_sequence=5)["score"] == -20  # the debt of 400 alone
    apply(service, "on_person_erased", erasure)  # delivered again: a duplicate, nothing more goes
    assert count(score_engine, "scored_item") == 1


def test_an_erasure_in_order_deletes_every_row_of_the_person(service, score_engine):
    apply(service, "on_person_created", person_created(1))
    apply(service, "on_income_added", item_added("income", 2, 1, "1000.00"))

    apply(
        service,
        "on_person_erased",
        PERSON_EVENTS.parse(PERSON_EVENTS.new("person_erased", TEST_HASHER.hash(CPF), 3, {})),
    )

    assert count(score_engine, "scored_item") == 0 and count(score_engine, "known_person") == 0
    with pytest.raises(ScoreNotFound):
        service.get_score(CPF)
