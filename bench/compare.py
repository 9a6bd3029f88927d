"""This system against the plain Nameko pipeline (``bench/plain``), in the same run.

Both run at once on the bench's broker node and PostgreSQL server (each with a
vhost and databases of its own, idle while the other is loaded); the load
alternates between them, round after round, at each number of connections. A
round is ``wrk`` posting incomes for ``compare_seconds``; a write counts when
it was answered 201 and its event was applied in score. The CPU of every
process (the three services, RabbitMQ, PostgreSQL; wrk apart) is read from
``/proc`` around the round and divided by the writes; so are the broker's own
message counters (published, confirmed, delivered, acked: RabbitMQ's global
counters). Rows inserted, updated and deleted per write come from each
database's ``pg_stat_user_tables`` over all of a pipeline's rounds (PostgreSQL
publishes a backend's counts up to ten seconds late, so they are read after a
pause, once per pipeline, not per round); so does the growth of every table
on disk (``pg_total_relation_size``), in KB per 1,000 writes.
"""

import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg2
from sqlalchemy import create_engine

from bench import wrk
from bench.data import person_body
from bench.stats import summary
from harness import databases
from harness.processes import ROOT, CpuMeter, System
from harness.rabbit import RabbitCluster

log = logging.getLogger("bench")

PLAIN_CONFIG = "bench/plain/config.yml"


@dataclass
class Pipeline:
    name: str
    services: System
    db_uris: dict
    committed_sql: str  # income ids/events committed between two database times
    applied_sql: str  # (count, last applied time) of those in score
    cleanup: list = field(default_factory=list)  # what stop() undoes, last first
    broker_pids: object = None  # () -> the broker's pids, when not the bench's node (a cluster)
    broker_nodes: object = None  # () -> the broker's nodes, when not the bench's node (a cluster)

    def _query(self, key, sql, params=()):
        conn = databases.connect(self.db_uris[key])
        try:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                return cur.fetchall()
        finally:
            conn.close()

    def now(self):
        return self._query("person:PersonBase", "SELECT clock_timestamp()")[0][0]

    def incomes(self) -> int:
        """Incomes person holds: the writes, counted where they are kept (wrk's
        last requests may commit after its round ended)."""
        return self._query("person:PersonBase", "SELECT count(*) FROM income")[0][0]

    def row_counts(self) -> dict:
        """Per database: rows inserted, updated and deleted since the server started."""
        return {
            key.split(":")[0]: dict(zip(ROW_COUNTERS, self._query(key, ROW_COUNTS_SQL)[0], strict=True))
            for key in self.db_uris
        }

    def table_sizes(self) -> dict:
        """Per database, per table: its bytes on disk (indexes and TOAST included)."""
        return {key.split(":")[0]: dict(self._query(key, TABLE_SIZES_SQL)) for key in self.db_uris}

    def committed(self, since, until) -> list:
        return [row[0] for row in self._query("person:PersonBase", self.committed_sql, (since, until))]

    def applied(self, ids) -> tuple:
        return self._query("score:ScoreBase", self.applied_sql, (ids,))[0]

    def wait_applied(self, ids, timeout=120) -> tuple:
        """Until score applied every one of ``ids`` (or the bound: the plain
        pipeline may lose some); (count, last applied time)."""
        deadline = time.monotonic() + timeout
        while True:
            count, last = self.applied(ids)
            if count >= len(ids) or time.monotonic() > deadline:
                return count, last
            time.sleep(0.2)


# RabbitMQ's global counters (rabbit_global_counters), as ``make bench`` names them.
BROKER_COUNTERS = {
    "published": "messages_received_total",
    "confirmed": "messages_confirmed_total",
    "delivered": "messages_delivered_total",
    "acked": "messages_acknowledged_total",
}
ROW_COUNTERS = ("inserted", "updated", "deleted")
ROW_COUNTS_SQL = (
    "SELECT coalesce(sum(n_tup_ins), 0), coalesce(sum(n_tup_upd), 0), coalesce(sum(n_tup_del), 0)"
    " FROM pg_stat_user_tables"
)
TABLE_SIZES_SQL = "SELECT relname, pg_total_relation_size(relid) FROM pg_stat_user_tables"
# PostgreSQL reports an idle backend's counts at most this late (PGSTAT_IDLE_INTERVAL).
STATS_DELAY_SECONDS = 11


def broker_counts(nodes) -> dict:
    """The broker's message counters, summed over its nodes and queue types."""
    totals = dict.fromkeys(BROKER_COUNTERS, 0)
    names = {counter: name for name, counter in BROKER_COUNTERS.items()}
    for node in nodes:
        out = node.ctl("eval", "rabbit_global_counters:overview().").stdout
        for counter, value in re.findall(r"(\w+) => (\d+)", out):
            if counter in names:
                totals[names[counter]] += int(value)
    return totals


def system_pipeline(system, services=None, db_uris=None, name="system") -> Pipeline:
    return Pipeline(
        name,
        services or system.services,
        db_uris or system.db_uris,
        "SELECT event_id::text FROM outbox WHERE event_type = 'income_added' AND created_at BETWEEN %s AND %s",
        "SELECT count(*), max(applied_at) FROM scored_item WHERE event_id = ANY(%s::uuid[])",
    )


def start_plain(system, log_dir) -> Pipeline:
    """The plain pipeline's services, on a vhost and databases of their own."""
    from bench.plain.models import PlainPersonBase, PlainScoreBase

    amqp_uri = system.node.add_vhost("plain")
    uris = databases.database_uris("plain", system.run_id)
    admin = psycopg2.connect(databases.dsn(databases.PG_BASE))
    admin.autocommit = True
    with admin.cursor() as cur:
        for uri in uris.values():
            cur.execute(f'CREATE DATABASE "{databases.make_url(uri).database}"')
    admin.close()
    for key, base in (("person:PersonBase", PlainPersonBase), ("score:ScoreBase", PlainScoreBase)):
        engine = create_engine(uris[key])
        base.metadata.create_all(engine)
        engine.dispose()
    services = System(amqp_uri, uris, log_dir, config=PLAIN_CONFIG, LOG_LEVEL="WARNING")
    for service in ("person", "score", "gateway"):
        services.start(service, module=f"bench.plain.{service}")
    services.wait_healthy(timeout=90)
    return Pipeline(
        "plain",
        services,
        uris,
        "SELECT id FROM income WHERE created_at BETWEEN %s AND %s",
        "SELECT count(*), max(applied_at) FROM scored_income WHERE item_id = ANY(%s::bigint[])",
    )


def stop(pipeline: Pipeline) -> None:
    pipeline.services.stop_all()
    databases.drop_databases(pipeline.db_uris)
    for undo in reversed(pipeline.cleanup):
        undo()


def start_revision(system, revision: str, log_dir) -> Pipeline:
    """This system at another git revision (the A of an A/B), from a checkout of
    its own, on a vhost and databases of its own (migrated by its own migrations)."""
    tree = Path(tempfile.mkdtemp(prefix="bench-ab-")) / "tree"
    subprocess.run(
        ["git", "worktree", "add", "--detach", str(tree), revision], cwd=ROOT, check=True, capture_output=True
    )
    cleanup = [
        lambda: subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, capture_output=True)
    ]
    try:
        uris = databases.database_uris("ab", system.run_id)
        env = {**os.environ, "PERSON_DB_URI": uris["person:PersonBase"], "SCORE_DB_URI": uris["score:ScoreBase"]}
        subprocess.run([sys.executable, "-m", "ops.migrate"], cwd=tree, env=env, check=True, capture_output=True)
        services = System(system.node.add_vhost("ab"), uris, log_dir, root=tree, **system.service_env)
        services.start_all(timeout=90)
    except BaseException:
        cleanup[0]()
        raise
    label = subprocess.run(["git", "rev-parse", "--short", revision], cwd=ROOT, capture_output=True, text=True)
    pipeline = system_pipeline(system, services, uris, name=f"system@{label.stdout.strip() or revision}")
    pipeline.cleanup = cleanup
    return pipeline


CLUSTER = "system on 3 nodes"


def start_cluster(system, log_dir) -> Pipeline:
    """This system on a three-node RabbitMQ cluster of its own (private nodes,
    as in the fault suite), with databases of its own; named :data:`CLUSTER`."""
    cluster = RabbitCluster(prefix="benchcl", run_id=system.run_id).start()
    try:
        uris = databases.create_databases("cl", system.run_id)
        services = System(cluster.add_vhost("bench"), uris, log_dir, **system.service_env)
        services.start_all(timeout=90)
    except BaseException:
        cluster.stop()
        raise
    pipeline = system_pipeline(system, services, uris, name=CLUSTER)
    pipeline.cleanup = [cluster.stop]
    pipeline.broker_pids = lambda: [node.pid for node in cluster.nodes if node.pid]
    pipeline.broker_nodes = lambda: cluster.nodes
    return pipeline


def create_people(pipeline: Pipeline, people: list, timeout: float = 60) -> None:
    """Through the pipeline's API; the plain gateway's /health knows nothing of
    person, so the first creation is retried until person answers (bounded)."""
    import requests

    deadline = time.monotonic() + timeout
    with requests.Session() as session:
        for cpf in people:
            while True:
                response = session.post(f"{pipeline.services.url}/person", json=person_body(cpf), timeout=30)
                if response.status_code < 500 or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            if response.status_code not in (200, 201, 409):
                raise RuntimeError(f"{pipeline.name} POST /person: {response.status_code} {response.text[:200]}")


def _meter(pipeline: Pipeline, node) -> CpuMeter:
    services = pipeline.services
    groups = {
        name.split(".")[0]: (lambda name=name: [services.pid(name)] if services.running(name) else [])
        for name in services.processes
    }
    groups["postgres"] = databases.server_pids
    groups["rabbitmq"] = pipeline.broker_pids or (lambda: [node.pid] if node.pid else [])
    groups["bench"] = lambda: [os.getpid()]
    return CpuMeter(groups)


def round_once(pipeline: Pipeline, node, people: list, connections: int, seconds: float, seed: int) -> dict:
    nodes = pipeline.broker_nodes() if pipeline.broker_nodes else [node]
    messages_before, incomes_before = broker_counts(nodes), pipeline.incomes()
    meter = _meter(pipeline, node).start()
    since = pipeline.now()
    result = wrk.run_wrk(pipeline.services.url, people, seconds, connections, seed=seed, timeout=10)
    until = pipeline.now()
    ids = pipeline.committed(since, until)
    applied, last = pipeline.wait_applied(ids)
    cpu = meter.stop()
    messages, written = broker_counts(nodes), pipeline.incomes() - incomes_before
    writes = min(result.created, applied)
    elapsed = (last - since).total_seconds() if last else float("nan")
    services_and_servers = {k: v for k, v in cpu.items() if k not in ("machine_busy", "wall", "bench")}
    return {
        "connections": connections,
        "answered_201": result.created,
        "refused": result.codes,
        "socket_errors": result.socket_errors,
        "applied": applied,
        "lost": len(ids) - applied,
        "messages_per_write": {k: (messages[k] - messages_before[k]) / written for k in messages} if written else {},
        "writes_per_sec": writes / elapsed if elapsed else float("nan"),
        "p50_ms": result.p50_accepted_ms,
        "p99_ms": result.p99_accepted_ms,
        "refused_share": (result.failed / (result.created + result.failed)) if result.created + result.failed else 0.0,
        "cpu_ms_per_write": {k: v * 1000 / writes for k, v in services_and_servers.items()} if writes else {},
        "cpu_ms_per_write_total": sum(services_and_servers.values()) * 1000 / writes if writes else float("nan"),
    }


def _keys(runs) -> list:
    return list(runs[0]["cpu_ms_per_write"]) if runs else []


def compare(pipelines: list, node, people: list, connections: tuple, rounds: int, seconds: float) -> dict:
    """Alternating rounds: for each round, each number of connections, each pipeline."""
    runs = {p.name: {c: [] for c in connections} for p in pipelines}
    time.sleep(STATS_DELAY_SECONDS)  # the people's creation counted before, not in the rounds
    rows_before = {p.name: (p.row_counts(), p.table_sizes(), p.incomes()) for p in pipelines}
    for number in range(rounds):
        for c in connections:
            for pipeline in pipelines:
                run = round_once(pipeline, node, people, c, seconds, seed=5000 + number * 100 + c)
                runs[pipeline.name][c].append(run)
                log.info(
                    "%s c=%d: %.0f writes/s, p50 %.1f ms, p99 %.1f ms, %.1f ms CPU/write, refused %.0f%%",
                    pipeline.name,
                    c,
                    run["writes_per_sec"],
                    run["p50_ms"],
                    run["p99_ms"],
                    run["cpu_ms_per_write_total"],
                    run["refused_share"] * 100,
                )
    time.sleep(STATS_DELAY_SECONDS)
    rows, sizes = {}, {}
    for p in pipelines:
        before, sizes_before, incomes = rows_before[p.name]
        after, sizes_after, written = p.row_counts(), p.table_sizes(), p.incomes() - incomes
        rows[p.name] = {
            db: {k: (after[db][k] - before[db][k]) / written for k in ROW_COUNTERS} if written else {} for db in after
        }
        # Bytes per write are KB (1,000 bytes) per 1,000 writes.
        sizes[p.name] = {
            db: {t: (size - sizes_before[db].get(t, 0)) / written for t, size in tables.items()} if written else {}
            for db, tables in sizes_after.items()
        }
    return {
        name: {
            c: {
                "writes_per_sec": summary(r["writes_per_sec"] for r in rs),
                "p50_ms": summary(r["p50_ms"] for r in rs),
                "p99_ms": summary(r["p99_ms"] for r in rs),
                "cpu_ms_per_write_total": summary(r["cpu_ms_per_write_total"] for r in rs),
                "cpu_ms_per_write": {
                    k: summary(r["cpu_ms_per_write"].get(k) for r in rs)
                    for k in (rs[0]["cpu_ms_per_write"] if rs else {})
                },
                "refused_share": summary(r["refused_share"] for r in rs),
                "lost": sum(r["lost"] for r in rs),
                "messages_per_write": {k: summary(r["messages_per_write"].get(k) for r in rs) for k in BROKER_COUNTERS},
                "rows_per_write": rows[name],
                "kb_per_1000_writes": sizes[name],
                "runs": rs,
            }
            for c, rs in by_c.items()
        }
        for name, by_c in runs.items()
    }
