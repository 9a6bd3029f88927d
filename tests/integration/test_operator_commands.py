"""The operator commands fail fast, in one line and with exit status 1, when
what they need is not running; ``make reset`` drops what it says and only that."""

import subprocess
import sys
import time
import uuid
from pathlib import Path

import amqp
import pytest
from alembic import command
from alembic.config import Config as AlembicConfig
from amqp.exceptions import PreconditionFailed
from kombu import Connection, Queue
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from contracts.erasure import CpfHasher
from harness.processes import ROOT
from harness.rabbit import message_count
from ops.migrate import migrate, migrate_queue_types, queues_of_a_type, upgrade

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
UNREACHABLE_BROKER = "amqp://guest:guest@127.0.0.1:1/"
UNREACHABLE_DB = "postgresql+psycopg2://postgres@127.0.0.1:1/nothing"
TIMEOUT = 30  # the commands' own wait for an answer: failing fast means well before it


def run(env, *command, stdin=None):
    started = time.monotonic()
    result = subprocess.run(
        [*command],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", **env},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=TIMEOUT * 2,
    )
    return result, time.monotonic() - started


def assert_one_line_failure(result, elapsed, says):
    assert result.returncode == 1, result
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and says in lines[0], result.stderr
    assert "Traceback" not in result.stderr and "Eventlet is deprecated" not in result.stderr
    assert elapsed < TIMEOUT, f"took {elapsed:.1f}s"


@pytest.mark.parametrize(
    ("command", "says"),
    [
        ((str(BIN / "deadletters"), "list"), "deadletters: score is not running (no consumer on rpc-score)."),
        ((str(BIN / "rebuild-replica"),), "rebuild-replica: score is not running (no consumer on rpc-score)."),
    ],
)
def test_a_command_says_at_once_that_its_service_is_not_running(fresh_config, command, says):
    result, elapsed = run({"AMQP_URI": fresh_config["AMQP_URI"]}, *command)
    assert_one_line_failure(result, elapsed, says)


@pytest.mark.parametrize("command", [(str(BIN / "deadletters"), "list"), (str(BIN / "rebuild-replica"),)])
def test_a_command_says_at_once_that_the_broker_is_unreachable(command):
    result, elapsed = run({"AMQP_URI": UNREACHABLE_BROKER}, *command)
    assert_one_line_failure(result, elapsed, "the message broker at amqp://guest:***@127.0.0.1:1/ is unreachable")


def test_migrate_says_at_once_that_postgresql_is_unreachable():
    env = {"PERSON_DB_URI": UNREACHABLE_DB, "SCORE_DB_URI": UNREACHABLE_DB}
    result, elapsed = run(env, sys.executable, "-m", "ops.migrate")
    assert result.returncode == 1, result
    assert result.stderr.strip().splitlines()[-1].startswith("migrate: PostgreSQL is unreachable"), result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture
def throwaway(fresh_config):
    """Two migrated databases and a vhost with the project's queues, to reset."""
    base = make_url(fresh_config["DB_URIS"]["person:PersonBase"])
    run_id = uuid.uuid4().hex[:8]
    uris = {
        "person:PersonBase": base.set(database=f"person_reset_{run_id}").render_as_string(hide_password=False),
        "score:ScoreBase": base.set(database=f"score_reset_{run_id}").render_as_string(hide_password=False),
    }
    migrate({"DB_URIS": uris})
    with Connection(fresh_config["AMQP_URI"]) as conn:
        channel = conn.channel()
        for name in ("rpc-person", "evt-person-income_added--score.on_income_added.dead"):
            Queue(name, durable=True)(channel).declare()
    env = {"AMQP_URI": fresh_config["AMQP_URI"], "PERSON_DB_URI": uris["person:PersonBase"]}
    env["SCORE_DB_URI"] = uris["score:ScoreBase"]
    yield env, uris
    admin = create_engine(base.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        for uri in uris.values():
            conn.execute(text(f'DROP DATABASE IF EXISTS "{make_url(uri).database}" WITH (FORCE)'))
    admin.dispose()


def databases_left(uris) -> set:
    admin = create_engine(make_url(uris["person:PersonBase"]).set(database="postgres"))
    with admin.connect() as conn:
        names = {row[0] for row in conn.execute(text("SELECT datname FROM pg_database"))}
    admin.dispose()
    return names & {make_url(uri).database for uri in uris.values()}


def test_reset_asks_and_does_nothing_without_a_yes(throwaway):
    env, uris = throwaway
    result, _ = run(env, sys.executable, "-m", "ops.reset", stdin="no\n")
    assert result.returncode == 1 and "nothing done" in result.stdout, result
    assert len(databases_left(uris)) == 2
    assert message_count(env["AMQP_URI"], "rpc-person") == 0  # still there (a missing queue raises)


def test_reset_drops_the_databases_and_the_queues(throwaway):
    env, uris = throwaway
    result, _ = run(env, sys.executable, "-m", "ops.reset", "--yes")
    assert result.returncode == 0, result.stderr
    assert databases_left(uris) == set()
    assert "deleted 2 queues" in result.stdout, result.stdout


def test_migrate_turns_the_classic_queues_of_an_earlier_version_into_quorum_queues(fresh_config):
    """A queue cannot change type: migrate replaces an idle classic ``rpc-<service>``
    and refuses while a service still consumes from it; it replaces a classic
    retry queue once its messages have gone back to their event queue."""
    config = {**fresh_config, "EVENT_RETRY_DELAYS": [0.5, 1]}
    event_queue = "evt-person-income_added--score.on_income_added"
    retry = f"{event_queue}.retry.1"
    with Connection(config["AMQP_URI"]) as conn:
        channel = conn.channel()
        for name in ("rpc-person", "rpc-score"):
            channel.queue_declare(name, durable=True, auto_delete=False)  # classic, as Nameko declares it
        channel.queue_declare(event_queue, durable=True, auto_delete=False)
        arguments = {"x-message-ttl": 500, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": event_queue}
        channel.queue_declare(retry, durable=True, auto_delete=False, arguments=arguments)  # classic, as before
        channel.basic_publish(amqp.Message("a failed event", delivery_mode=2), exchange="", routing_key=retry)
        consumer = conn.channel()
        consumer.basic_consume("rpc-score", callback=lambda message: None)

        with pytest.raises(RuntimeError, match="rpc-score is a classic queue .* 1 service instance"):
            migrate_queue_types(config)
        consumer.close()
        # rpc-person, idle, was replaced before the refusal; the rest now.
        assert migrate_queue_types(config) == ["rpc-score", retry]
        assert migrate_queue_types(config) == []  # and again: nothing to do

        assert message_count(config["AMQP_URI"], event_queue) == 1  # the waiting event went back, not lost
        for queue in queues_of_a_type(config, ("person", "score")):
            queue(conn.channel()).declare()  # succeeds only as the type the services declare
        with pytest.raises(PreconditionFailed):
            conn.channel().queue_declare("rpc-person", durable=True, auto_delete=False)


def migrations(uri, service="score") -> AlembicConfig:
    """Alembic's configuration of a service's migrations on ``uri``, to move it by hand."""
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", f"{service}:migrations")
    cfg.set_main_option("sqlalchemy.url", uri.replace("%", "%%"))
    return cfg


def test_migrate_hashes_the_people_score_knew_before_erasure_existed(throwaway):
    """Score finds an erased person's rows by the CPF's keyed hash: the people
    it knew before that column existed get theirs from the migration, with the
    key the services are given."""
    _, uris = throwaway
    score_uri = uris["score:ScoreBase"]
    cfg = migrations(score_uri)
    command.downgrade(cfg, "0003")  # score's schema before erasure
    engine = create_engine(score_uri)
    with engine.begin() as conn:
        conn.execute(
            text("INSERT INTO known_person (cpf, last_sequence) VALUES ('52998224725', 3), ('11144477735', 1)")
        )
    upgrade(score_uri, "score:migrations", config={"PERSONAL_DATA_HASH_KEY": "the-services-key"})

    with engine.connect() as conn:
        hashes = dict(conn.execute(text("SELECT cpf, cpf_hash FROM known_person")).all())
    engine.dispose()
    hasher = CpfHasher(b"the-services-key")
    assert hashes == {cpf: hasher.hash(cpf) for cpf in ("52998224725", "11144477735")}


def test_migrate_folds_score_s_inbox_of_event_ids_into_watermarks(throwaway):
    """Score's inbox was a row per event applied (processed_events): the
    migration gives each known person its watermark from those rows (all up
    to the first gap, and those above it; after its erasure for a person
    created again) and drops them."""
    _, uris = throwaway
    score_uri = uris["score:ScoreBase"]
    cfg = migrations(score_uri)
    command.downgrade(cfg, "0004")  # score's schema with processed_events
    engine = create_engine(score_uri)
    whole, gapped, again = "52998224725", "11144477735", "01234567890"
    applied = {whole: [1, 2, 3, 3], gapped: [1, 2, 4, 6], again: [6, 7, 9]}  # 3 twice: two consumers
    with engine.begin() as conn:
        conn.execute(
            text("INSERT INTO known_person (cpf, cpf_hash, last_sequence) VALUES (:c, :h, :n)"),
            [{"c": cpf, "h": f"hash-{cpf}", "n": max(seqs)} for cpf, seqs in applied.items()],
        )
        conn.execute(text("INSERT INTO erased_person (cpf_hash, sequence) VALUES (:h, 5)"), {"h": f"hash-{again}"})
        conn.execute(
            text(
                "INSERT INTO processed_events (consumer, event_id, event_type, aggregate_key, sequence)"
                " VALUES (:consumer, :id, 'income_added', :c, :n)"
            ),
            [
                {"consumer": f"score.on_{i}", "id": str(uuid.uuid4()), "c": cpf, "n": n}
                for cpf, seqs in applied.items()
                for i, n in enumerate(seqs)
            ],
        )
    upgrade(score_uri, "score:migrations")

    with engine.connect() as conn:
        marks = {
            cpf: (through, above)
            for cpf, through, above in conn.execute(
                text("SELECT cpf, applied_through, applied_above FROM known_person")
            )
        }
        inbox_left = conn.execute(text("SELECT to_regclass('processed_events')")).scalar()
    engine.dispose()
    assert marks == {whole: (3, []), gapped: (2, [4, 6]), again: (7, [9])}
    assert inbox_left is None


def test_migrate_gives_person_s_rows_the_id_and_sequence_of_the_event_that_announced_them(throwaway):
    """A rebuild reads person's current state as the events that built it:
    rows written before they kept their event's id and sequence take them
    from that event in the outbox (kept for ever until then). A row with no
    event there stops the upgrade, saying how many."""
    _, uris = throwaway
    person_uri = uris["person:PersonBase"]
    cfg = migrations(person_uri, "person")
    command.downgrade(cfg, "0008")  # person's rows before they kept their event
    engine = create_engine(person_uri)
    cpf, created, income, erased, kept = "52998224725", str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4()), "h2"
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO person (cpf, name, address, date_of_birth, last_sequence)"
                " VALUES (:c, 'A', 'R', '1990-01-01', 2)"
            ),
            {"c": cpf},
        )
        item = conn.execute(
            text("INSERT INTO income (cpf, type, value) VALUES (:c, 'salary', 10) RETURNING id"), {"c": cpf}
        ).scalar()
        conn.execute(
            text("INSERT INTO erasure (cpf_hash, sequence, erased_by) VALUES ('h1', 4, 'dpo'), (:k, 2, 'dpo')"),
            {"k": kept},
        )
        outbox = text(
            "INSERT INTO outbox (event_id, event_type, aggregate_key, sequence, payload)"
            " VALUES (:id, :type, :key, :n, CAST(:payload AS jsonb))"
        )
        conn.execute(outbox, {"id": created, "type": "person_created", "key": cpf, "n": 1, "payload": "{}"})
        conn.execute(
            outbox,
            {"id": income, "type": "income_added", "key": cpf, "n": 2, "payload": f'{{"data": {{"item_id": {item}}}}}'},
        )
        conn.execute(outbox, {"id": erased, "type": "person_erased", "key": "h1", "n": 4, "payload": "{}"})
    command.upgrade(cfg, "head")

    with engine.connect() as conn:
        person = conn.execute(text("SELECT event_id::text, sequence FROM person")).one()
        item_row = conn.execute(text("SELECT event_id::text, sequence FROM income")).one()
        erasures = dict(conn.execute(text("SELECT cpf_hash, event_id::text FROM erasure")).all())
    assert tuple(person) == (created, 1) and tuple(item_row) == (income, 2)
    assert erasures["h1"] == erased and erasures[kept]  # an erasure's lost event: a new id, it only names it

    command.downgrade(cfg, "0008")
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO person (cpf, name, address, date_of_birth) VALUES ('11144477735', 'B', 'R', '1990-01-01')"
            )
        )
    with pytest.raises(RuntimeError, match="1 person rows have no event in the outbox"):
        command.upgrade(cfg, "head")
    engine.dispose()
