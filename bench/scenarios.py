"""The measurements, each repeated; every function returns plain data for the report."""

import json
import logging
import os
import subprocess
import sys
import threading
import time
from dataclasses import asdict

import requests

from bench import baselines, wrk
from bench.data import BULK_INCOME_SQL, event_body_bytes
from bench.stats import percentile, rate_from_timestamps, summary
from bench.system import BenchSystem
from contracts.kinds import BY_NAME
from harness import databases
from harness.cpf import cpfs
from harness.processes import ROOT, CpuMeter
from harness.rabbit import message_count
from ops.queues import event_queue

log = logging.getLogger("bench")

INCOME_QUEUE = event_queue(BY_NAME["income"].event_type)


# --- 1. baselines -------------------------------------------------------------------------


def amqp_baselines(system: BenchSystem, p) -> dict:
    """Publish (confirm each / batched) and consume-ack msgs/s, per queue type."""
    body = event_body_bytes()
    out = {"message_bytes": len(body)}
    for queue_type in ("classic", "quorum"):
        queue = baselines.AmqpBaseline(system.baseline_amqp_uri, queue_type, body)
        each, batched, consume = [], [], []
        for _ in range(p.reps):
            each.append(queue.publish_confirm_each(p.amqp_each_msgs))
            batched.append(queue.publish_batched(p.amqp_batched_msgs, p.amqp_batch))
            consume.append(queue.consume_ack(p.amqp_each_msgs + p.amqp_batched_msgs, p.amqp_prefetch))
        queue.delete()
        out[queue_type] = {"confirm_each": summary(each), "batched": summary(batched), "consume_ack": summary(consume)}
        log.info(
            "AMQP %s: each %.0f, batched %.0f, consume %.0f msg/s",
            queue_type,
            out[queue_type]["confirm_each"]["median"],
            out[queue_type]["batched"]["median"],
            out[queue_type]["consume_ack"]["median"],
        )
    return out


def pg_baselines(system: BenchSystem, p) -> dict:
    """income + outbox commits/s with 1 and 8 clients, on person's tables (emptied afterwards)."""
    people = cpfs(8, start=900000001)  # none of the benchmark's people
    system.person(
        "INSERT INTO person (cpf, name, address, date_of_birth, event_id, sequence, last_sequence) "
        "SELECT unnest(%s::text[]), 'Baseline', 'Rua B, 1', '1980-01-01', gen_random_uuid(), 1, 1",
        (people,),
    )
    out = {}
    try:
        for clients in (1, 8):
            rates = [
                baselines.pg_item_outbox_commits(system.person_db, people, clients, p.pg_seconds) for _ in range(p.reps)
            ]
            out[f"clients_{clients}"] = summary(rates)
            log.info("PG income+outbox commits, %d client(s): %.0f/s", clients, out[f"clients_{clients}"]["median"])
    finally:
        # The services must never see these rows (the relay would publish them).
        system.person("TRUNCATE income, outbox RESTART IDENTITY")
        system.person("DELETE FROM person WHERE cpf = ANY(%s)", (people,))
    return out


# --- 2. write path ---------------------------------------------------------------------------


def write_path(system: BenchSystem, people: list, p) -> dict:
    # Warm-up, not measured: first connections, first queries, lazy imports.
    wrk.run_wrk(system.services.url, people, p.warmup_seconds, 8, seed=77)
    out = {}
    for connections in p.concurrencies:
        runs = []
        for rep in range(p.reps):
            system.wait_quiet()
            result = wrk.run_wrk(system.services.url, people, p.write_seconds, connections, seed=rep * 101)
            runs.append(result)
            log.info(
                "write c=%d: %.0f req/s p50 %.1f ms p99 %.1f ms errors %d",
                connections,
                result.created_per_sec,
                result.p50_ms,
                result.p99_ms,
                result.errors,
            )
        out[connections] = {
            "rps": summary(r.created_per_sec for r in runs),
            "p50_ms": summary(r.p50_ms for r in runs),
            "p99_ms": summary(r.p99_ms for r in runs),
            "errors": summary(r.errors for r in runs),
            "runs": [asdict(r) for r in runs],
        }
    return out


# --- 3. propagation lag -------------------------------------------------------------------------


def _lags_ms(system: BenchSystem, since, until) -> list:
    """Commit-side stamp in person (outbox.created_at) to applied stamp in score
    (scored_item.applied_at), per income event created in [since, until]."""
    created = dict(
        system.person(
            "SELECT event_id::text, created_at FROM outbox "
            "WHERE event_type = 'income_added' AND created_at >= %s AND created_at <= %s",
            (since, until),
        )
    )
    if not created:
        return []
    applied = system.score(
        "SELECT event_id::text, applied_at FROM scored_item WHERE event_id = ANY(%s::uuid[])",
        (list(created),),
    )
    return sorted((at - created[event_id]).total_seconds() * 1000 for event_id, at in applied)


def lag(system: BenchSystem, people: list, rate: float, p) -> dict:
    runs = []
    for rep in range(p.lag_reps):
        system.wait_quiet()
        since = system.db_now()
        result = wrk.run_wrk(system.services.url, people, p.lag_seconds, p.lag_connections, rate=rate, seed=1000 + rep)
        until = system.db_now()
        system.wait_quiet()
        lags = _lags_ms(system, since, until)
        run = {
            "target_rate": rate,
            "achieved_rate": result.created_per_sec,
            "events": len(lags),
            "errors": result.errors,
            "p50_ms": percentile(lags, 50),
            "p99_ms": percentile(lags, 99),
            "max_ms": lags[-1] if lags else float("nan"),
            "http_p50_ms": result.p50_ms,
            "http_p99_ms": result.p99_ms,
        }
        runs.append(run)
        log.info(
            "lag at %.0f/s (achieved %.0f): p50 %.1f ms p99 %.1f ms max %.1f ms over %d events",
            rate,
            run["achieved_rate"],
            run["p50_ms"],
            run["p99_ms"],
            run["max_ms"],
            run["events"],
        )
    return {
        "rate": rate,
        "achieved_rate": summary(r["achieved_rate"] for r in runs),
        "p50_ms": summary(r["p50_ms"] for r in runs),
        "p99_ms": summary(r["p99_ms"] for r in runs),
        "max_ms": summary(r["max_ms"] for r in runs),
        "runs": runs,
    }


# --- 2b. the Traefik hop --------------------------------------------------------------------------


def edge_hop(system: BenchSystem, people: list, p) -> dict:
    """Writes through Traefik against straight to the gateway behind it, in
    alternating rounds at each of ``p.concurrencies``: writes/s, p50/p99, and
    the CPU each process spends per write (Traefik's own among them), counted
    until score has applied every write of the round."""
    services = system.services
    services.start_edge()  # in front of gateway.1, the one the direct rounds use
    services.wait_edge_sees(1)
    try:
        paths = {"direct": services.gateways["gateway.1"], "traefik": services.edge_url}
        wrk.run_wrk(paths["traefik"], people, p.warmup_seconds, 8, seed=78)
        out = {}
        for connections in p.concurrencies:
            runs = {name: [] for name in paths}
            for rep in range(p.reps):
                order = list(paths) if rep % 2 == 0 else list(reversed(paths))
                for name in order:
                    system.wait_quiet()
                    meter = _cpu_meter(system).start()
                    result = wrk.run_wrk(paths[name], people, p.write_seconds, connections, seed=3000 + rep)
                    system.wait_quiet(timeout=600)
                    cpu = meter.stop()
                    writes = result.created or 1
                    per_write = {k: v * 1000 / writes for k, v in cpu.items() if k not in ("wall", "machine_busy")}
                    per_write.pop("bench", None)
                    runs[name].append(
                        {
                            "rps": result.created_per_sec,
                            "p50_ms": result.p50_ms,
                            "p99_ms": result.p99_ms,
                            "errors": result.errors,
                            "cpu_ms_per_write": per_write,
                            "system_cpu_ms_per_write": sum(per_write.values()),
                        }
                    )
                    log.info(
                        "hop %s c=%d: %.0f writes/s p50 %.1f ms p99 %.1f ms, Traefik %.2f of %.2f ms CPU per write",
                        name,
                        connections,
                        result.created_per_sec,
                        result.p50_ms,
                        result.p99_ms,
                        per_write.get("edge", 0.0),
                        sum(per_write.values()),
                    )
            out[connections] = {
                name: {
                    "rps": summary(r["rps"] for r in rs),
                    "p50_ms": summary(r["p50_ms"] for r in rs),
                    "p99_ms": summary(r["p99_ms"] for r in rs),
                    "errors": summary(r["errors"] for r in rs),
                    "system_cpu_ms_per_write": summary(r["system_cpu_ms_per_write"] for r in rs),
                    "traefik_cpu_ms_per_write": summary(r["cpu_ms_per_write"].get("edge", 0.0) for r in rs),
                    "runs": rs,
                }
                for name, rs in runs.items()
            }
        return out
    finally:
        services.stop("edge.1")


# --- 4. end to end ------------------------------------------------------------------------------


def _cpu_meter(system: BenchSystem) -> CpuMeter:
    services = system.services
    groups = {
        # Reported per service: "person", not its process "person.1".
        name.split(".")[0]: (lambda name=name: [services.pid(name)] if services.running(name) else [])
        for name in services.processes
    }
    groups["postgres"] = databases.server_pids
    groups["rabbitmq"] = lambda: [system.node.pid] if system.node.pid else []
    groups["bench"] = lambda: [os.getpid()]
    return CpuMeter(groups)


def end_to_end(system: BenchSystem, people: list, connections: int, p) -> dict:
    runs = []
    for rep in range(p.e2e_reps):
        system.wait_quiet()
        meter = _cpu_meter(system).start()
        since = system.db_now()
        result = wrk.run_wrk(system.services.url, people, p.e2e_seconds, connections, seed=2000 + rep)
        until = system.db_now()
        system.wait_quiet(timeout=600)
        cpu = meter.stop()
        cpu["wrk"] = result.cpu_seconds
        cpu["other"] = max(
            0.0, cpu["machine_busy"] - sum(v for k, v in cpu.items() if k not in ("machine_busy", "wall"))
        )
        ids = [
            row[0]
            for row in system.person(
                "SELECT event_id::text FROM outbox "
                "WHERE event_type = 'income_added' AND created_at >= %s AND created_at <= %s",
                (since, until),
            )
        ]
        applied, last = system.score(
            "SELECT count(*), max(applied_at) FROM scored_item WHERE event_id = ANY(%s::uuid[])", (ids,)
        )[0]
        writes = min(result.created, applied)
        elapsed = (last - since).total_seconds() if last else float("nan")
        run = {
            "connections": connections,
            "answered_201": result.created,
            "committed": len(ids),
            "applied": applied,
            "errors": result.errors,
            "load_seconds": (until - since).total_seconds(),
            "until_last_applied_seconds": elapsed,
            "writes_per_sec": writes / elapsed if elapsed else float("nan"),
            "http_rps": result.created_per_sec,
            "p50_ms": result.p50_ms,
            "p99_ms": result.p99_ms,
            "cpu_seconds": cpu,
            "cpu_ms_per_write": {k: v * 1000 / writes for k, v in cpu.items() if k != "wall"} if writes else {},
        }
        runs.append(run)
        log.info(
            "e2e c=%d: %.0f writes/s (%d applied of %d answered 201, last applied %.1fs after start)",
            connections,
            run["writes_per_sec"],
            applied,
            result.created,
            elapsed,
        )
    cpu_keys = runs[0]["cpu_ms_per_write"].keys() if runs else []
    return {
        "connections": connections,
        "writes_per_sec": summary(r["writes_per_sec"] for r in runs),
        "errors": summary(r["errors"] for r in runs),
        "cpu_ms_per_write": {k: summary(r["cpu_ms_per_write"].get(k) for r in runs) for k in cpu_keys},
        "runs": runs,
    }


# --- 5 + 6. outbox drain after an outage, then score's catch-up ---------------------------------


def _wait(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def outage_cycle(system: BenchSystem, count: int) -> dict:
    """Score stopped and the broker's app stopped; ``count`` writes committed straight
    into person's database as person commits them; the broker started: the relay's
    drain rate. Then score started: its catch-up rate over the queued events."""
    services, node = system.services, system.node
    system.wait_quiet()
    services.stop("score.1")
    node.stop_app()
    positions = [row[0] for row in system.person(BULK_INCOME_SQL, {"count": count})]
    lo, hi = min(positions), max(positions)
    # Stamped before the command: start_app returns only after the node has
    # booted, by which time the relay may already have published much of the backlog.
    start_command = system.db_now()
    broker_back = time.monotonic()
    node.start_app()

    def drained():
        return (
            system.person(
                "SELECT count(*) FROM outbox WHERE position BETWEEN %s AND %s AND published_at IS NULL", (lo, hi)
            )[0][0]
            == 0
        )

    _wait(drained, 120 + count / 50, "the outbox backlog to drain", 0.1)
    first, last = system.person(
        "SELECT min(published_at), max(published_at) FROM outbox WHERE position BETWEEN %s AND %s", (lo, hi)
    )[0]
    after_first = system.person(
        "SELECT count(*) FROM outbox WHERE position BETWEEN %s AND %s AND published_at > %s", (lo, hi, first)
    )[0][0]
    drain = {
        "rows": count,
        "rate": rate_from_timestamps(after_first, first, last),
        "rate_from_broker_start": count / (last - start_command).total_seconds(),
        "first_publish_after_start_command_seconds": (first - start_command).total_seconds(),
        "start_app_seconds": time.monotonic() - broker_back,
    }
    queued = message_count(system.amqp_uri, INCOME_QUEUE)
    log.info(
        "drain of %d: %.0f rows/s (%.0f/s counting %.1fs of broker boot and reconnect); %d queued for score",
        count,
        drain["rate"],
        drain["rate_from_broker_start"],
        drain["first_publish_after_start_command_seconds"],
        queued,
    )
    ids = [
        row[0] for row in system.person("SELECT event_id::text FROM outbox WHERE position BETWEEN %s AND %s", (lo, hi))
    ]
    score_started = system.db_now()
    services.start("score")

    def applied():
        return system.score("SELECT count(*) FROM scored_item WHERE event_id = ANY(%s::uuid[])", (ids,))[0][0]

    _wait(lambda: applied() >= count, 120 + count / 20, "score to catch up", 0.25)
    first, last = system.score(
        "SELECT min(applied_at), max(applied_at) FROM scored_item WHERE event_id = ANY(%s::uuid[])", (ids,)
    )[0]
    after_first = system.score(
        "SELECT count(*) FROM scored_item WHERE event_id = ANY(%s::uuid[]) AND applied_at > %s", (ids, first)
    )[0][0]
    catch_up = {
        "events": count,
        "queued_before_start": queued,
        "rate": rate_from_timestamps(after_first, first, last),
        "rate_from_process_start": count / (last - score_started).total_seconds(),
        "startup_seconds": (first - score_started).total_seconds(),
    }
    log.info(
        "catch-up of %d: %.0f events/s (%.0f/s counting %.1fs of start-up)",
        count,
        catch_up["rate"],
        catch_up["rate_from_process_start"],
        catch_up["startup_seconds"],
    )
    services.wait_healthy(timeout=120)
    return {"drain": drain, "catch_up": catch_up}


def outages(system: BenchSystem, p) -> dict:
    cycles = [outage_cycle(system, p.outbox_rows) for _ in range(p.outage_reps)]
    return {
        "rows": p.outbox_rows,
        "drain_rate": summary(c["drain"]["rate"] for c in cycles),
        "drain_rate_from_broker_start": summary(c["drain"]["rate_from_broker_start"] for c in cycles),
        "catch_up_rate": summary(c["catch_up"]["rate"] for c in cycles),
        "catch_up_rate_from_process_start": summary(c["catch_up"]["rate_from_process_start"] for c in cycles),
        "cycles": cycles,
    }


# --- 10. read-your-writes ------------------------------------------------------------------------


def _ryw_round(url: str, people: list, count: int, offset: int) -> dict:
    """``count`` times: add an income, then read the score with the write's
    sequence at once. The gateway's own wait (``Server-Timing``) and the client's
    read time per read; plain reads (no sequence) in between, as the baseline."""
    waits, reads, plain, stale = [], [], [], 0
    with requests.Session() as http:
        for i in range(count):
            cpf = people[(offset + i) % len(people)]
            written = http.post(f"{url}/person/{cpf}/income", json={"type": "bench", "value": "100.00"}, timeout=10)
            written.raise_for_status()
            started = time.perf_counter()
            seen = http.get(f"{url}/{cpf}/score", params={"min_sequence": written.json()["sequence"]}, timeout=10)
            reads.append((time.perf_counter() - started) * 1000)
            seen.raise_for_status()
            stale += seen.json()["stale"]
            waits.append(float(seen.headers["Server-Timing"].split("dur=")[1]))
            started = time.perf_counter()
            http.get(f"{url}/{cpf}/score", timeout=10).raise_for_status()
            plain.append((time.perf_counter() - started) * 1000)
    waits.sort(), reads.sort(), plain.sort()
    return {
        "reads": count,
        "stale": stale,
        "wait_p50_ms": percentile(waits, 50),
        "wait_p99_ms": percentile(waits, 99),
        "wait_max_ms": waits[-1],
        "read_p50_ms": percentile(reads, 50),
        "read_p99_ms": percentile(reads, 99),
        "plain_read_p50_ms": percentile(plain, 50),
        "plain_read_p99_ms": percentile(plain, 99),
    }


def read_your_writes(system: BenchSystem, people: list, background_rate: float, p) -> dict:
    """Write-then-read rounds on an idle system, then under background writes at ``background_rate``."""
    out = {}
    for label, rate in (("idle", None), ("loaded", background_rate)):
        rounds = []
        for rep in range(p.reps):
            system.wait_quiet()
            load = None
            if rate:
                seconds = max(2, p.ryw_reads // 50)
                load = threading.Thread(
                    target=wrk.run_wrk,
                    args=(system.services.url, people, seconds, p.lag_connections),
                    kwargs={"rate": rate, "seed": 3000 + rep},
                )
                load.start()
                time.sleep(0.5)  # let the load reach its rate
            rounds.append(_ryw_round(system.services.url, people, p.ryw_reads, rep * p.ryw_reads))
            if load is not None:
                load.join()
            log.info(
                "read-your-writes %s: wait p50 %.2f ms p99 %.2f ms, read p50 %.2f ms (plain %.2f ms), %d stale",
                label,
                rounds[-1]["wait_p50_ms"],
                rounds[-1]["wait_p99_ms"],
                rounds[-1]["read_p50_ms"],
                rounds[-1]["plain_read_p50_ms"],
                rounds[-1]["stale"],
            )
        out[label] = {
            "background_rate": rate,
            **{key: summary(r[key] for r in rounds) for key in rounds[0] if key != "reads"},
            "reads_per_round": p.ryw_reads,
            "rounds": rounds,
        }
    return out


# --- 11. replica rebuild --------------------------------------------------------------------------


# The command line's loop, in a process of its own: ops.rebuild patches
# eventlet into whatever imports it, and this process must stay unpatched
# (its threads and psycopg2 baselines would run as green threads).
REBUILD = (
    "import json, sys; from ops.rebuild import run; "
    "print(json.dumps(run({'AMQP_URI': sys.argv[1]}, 0, 1000, 120, progress=False)))"
)


def rebuild(system: BenchSystem, p) -> dict:
    """Score's replica emptied (a lost database), then rebuilt from person's
    current state and history with the command line's own loop (``ops.rebuild.run``, no progress bar),
    score running as in production. Checks that every event was applied once."""
    runs = []
    for _ in range(p.reps):
        system.wait_quiet()
        history = system.person("SELECT count(*) FROM outbox")[0][0]
        system.score("TRUNCATE scored_item, known_person, replica_checkpoint")
        done = subprocess.run(
            [sys.executable, "-c", REBUILD, system.amqp_uri], capture_output=True, text=True, timeout=600, cwd=ROOT
        )
        if done.returncode != 0:
            raise RuntimeError(f"rebuild failed ({done.returncode}): {done.stderr[-2000:]}")
        totals = json.loads(done.stdout.strip().splitlines()[-1])
        applied = system.score(databases.APPLIED_EVENTS)[0][0]
        if totals["applied"] != history or applied != history:
            raise RuntimeError(f"rebuild applied {totals['applied']} ({applied} in the inbox) of {history} events")
        runs.append({"events": history, "seconds": totals["seconds"], "rate": totals["events_per_second"]})
        log.info("rebuild of %d events: %.0f events/s", history, totals["events_per_second"])
    return {"events": summary(r["events"] for r in runs), "rate": summary(r["rate"] for r in runs), "runs": runs}
