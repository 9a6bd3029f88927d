"""score's rebuild calling person's current state and event history over the real broker (RPC
between two real containers), on real PostgreSQL: a replica lost under a
running score is filled again, once per event."""

import pytest
from nameko.testing.services import entrypoint_hook
from sqlalchemy import text

from contracts.kinds import NAMES
from harness.cpf import cpfs
from harness.databases import APPLIED_EVENTS
from harness.waits import wait_for
from person.service import PersonService
from score import rules
from score.rebuild import RebuildError
from score.service import ScoreService

pytestmark = pytest.mark.integration

PEOPLE = cpfs(4, start=555000111)


def scalar(engine, sql):
    with engine.connect() as conn:
        return conn.execute(text(sql)).scalar()


def call(container, method, *args):
    with entrypoint_hook(container, method) as hook:
        return hook(*args)


def expected_scores(person_engine):
    items = {cpf: [] for cpf in PEOPLE}
    with person_engine.connect() as conn:
        for kind in NAMES:
            for cpf, value in conn.execute(text(f"SELECT cpf, value FROM {kind}")):
                items[cpf].append((kind, value))
    return {cpf: rules.score_items(found)["score"] for cpf, found in items.items()}


def test_a_replica_lost_under_a_running_score_is_rebuilt(run_container, person_engine, score_engine):
    person = run_container(PersonService)
    score = run_container(ScoreService)
    for n, cpf in enumerate(PEOPLE):
        call(person, "create_person", {"cpf": cpf, "name": "R", "address": "Rua C, 3", "date_of_birth": "1970-07-07"})
        call(person, "add_income", cpf, {"type": "salary", "value": 2500 + n})
        call(person, "add_asset", cpf, {"type": "house", "value": "150000.10"})
        call(person, "add_debt", cpf, {"value": 99 * (n + 1)})
    history = scalar(person_engine, "SELECT count(*) FROM outbox")
    wait_for(
        lambda: scalar(score_engine, APPLIED_EVENTS) == history,
        30,
        "the whole history applied",
    )
    before = {cpf: call(score, "get_score", cpf)["score"] for cpf in PEOPLE}
    assert before == expected_scores(person_engine)

    with score_engine.begin() as conn:  # the replica is lost; score keeps running
        conn.execute(text("TRUNCATE scored_item, known_person"))

    totals = call(score, "rebuild", 0, 3)

    assert (totals["fetched"], totals["applied"], totals["skipped"], totals["malformed"]) == (history, history, 0, 0)
    assert totals["pages"] == len(PEOPLE) + 1  # from the state a person a page (4 events > 3), then the tail
    assert {cpf: call(score, "get_score", cpf)["score"] for cpf in PEOPLE} == before
    assert scalar(score_engine, APPLIED_EVENTS) == history
    assert scalar(score_engine, "SELECT position FROM replica_checkpoint WHERE source = 'person'") == history

    again = call(score, "rebuild_step", None, 1000)  # from the checkpoint: nothing left
    assert (again["from_position"], again["fetched"], again["done"]) == (history, 0, True)


def test_a_rebuild_without_person_fails_and_says_so(run_container, score_engine):
    score = run_container(ScoreService)  # person never ran on this vhost

    with pytest.raises(RebuildError, match="person is not running"):
        call(score, "rebuild_step", 0, 10)
    assert scalar(score_engine, "SELECT count(*) FROM replica_checkpoint") == 0
