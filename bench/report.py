"""One table from the results, printed and written as JSON (the same rows, plus the raw runs)."""

import json
import math
from pathlib import Path

MB = 1_000_000

# issue 4's targets
TARGET_E2E_VS_PG = 0.30
TARGET_DRAIN_VS_CONFIRM_EACH = 0.80
TARGET_CATCH_UP_VS_PG = 0.60
TARGET_LAG_P50_MS = 5.0
TARGET_LAG_P99_MS = 25.0
TARGET_RSS_MB = 120.0


def _row(section, metric, stats=None, unit="", note="", **extra):
    stats = stats or {}
    return {
        "section": section,
        "metric": metric,
        "median": stats.get("median"),
        "min": stats.get("min"),
        "max": stats.get("max"),
        "n": stats.get("n"),
        "unit": unit,
        "note": note,
        **extra,
    }


def _ratio_row(section, metric, numerator, denominator, target=None, note=""):
    ratio = numerator / denominator if numerator and denominator else None
    status = None
    if target is not None and ratio is not None:
        status = "PASS" if ratio >= target else "MISS"
    return _row(
        section,
        metric,
        {"median": None if ratio is None else ratio * 100},
        "%",
        note,
        target=None if target is None else f">= {target * 100:.0f}%",
        status=status,
    )


def _limit_row(section, metric, stats, unit, limit, note=""):
    value = stats.get("median")
    status = None if value is None else ("PASS" if value < limit else "MISS")
    return _row(section, metric, stats, unit, note, target=f"< {limit:g} {unit}", status=status)


def build_rows(results: dict) -> list:
    rows = []
    amqp, pg = results.get("amqp"), results.get("pg")
    S = "1 baselines"
    if amqp:
        size = amqp["message_bytes"]
        for qtype, label in (("classic", "classic durable queue"), ("quorum", "quorum queue")):
            q = amqp[qtype]
            rows.append(
                _row(S, f"RabbitMQ publish, wait for each confirm, {label}", q["confirm_each"], "msg/s", f"{size} B")
            )
            rows.append(
                _row(
                    S,
                    f"RabbitMQ publish {results['params']['amqp_batch']}, then wait for all confirms, {label}",
                    q["batched"],
                    "msg/s",
                )
            )
            rows.append(
                _row(
                    S,
                    f"RabbitMQ consume + ack each (prefetch {results['params']['amqp_prefetch']}), {label}",
                    q["consume_ack"],
                    "msg/s",
                )
            )
    if pg:
        rows.append(_row(S, "PostgreSQL commits of income + outbox row, 1 client", pg["clients_1"], "txn/s"))
        rows.append(_row(S, "PostgreSQL commits of income + outbox row, 8 clients", pg["clients_8"], "txn/s"))

    write = results.get("write_path")
    if write:
        S = f"2 write path POST /person/<cpf>/income ({results['params']['people']} people)"
        for connections, w in write.items():
            rows.append(_row(S, f"c={connections}: answered 201 per second", w["rps"], "req/s"))
            rows.append(_row(S, f"c={connections}: latency p50", w["p50_ms"], "ms"))
            rows.append(_row(S, f"c={connections}: latency p99", w["p99_ms"], "ms"))
            rows.append(_row(S, f"c={connections}: errors (non-201 or no answer) per run", w["errors"], "count"))

    hop = results.get("edge_hop")
    if hop:
        S = "2b the Traefik hop: POST income through Traefik against straight to the gateway behind it"
        for connections, h in hop.items():
            for metric, key, unit in (
                ("answered 201 per second", "rps", "req/s"),
                ("latency p50", "p50_ms", "ms"),
                ("latency p99", "p99_ms", "ms"),
                ("CPU per write, all processes", "system_cpu_ms_per_write", "ms"),
            ):
                rows.append(_row(S, f"c={connections}: {metric}, straight", h["direct"][key], unit))
                rows.append(_row(S, f"c={connections}: {metric}, through Traefik", h["traefik"][key], unit))
            rows.append(_row(S, f"c={connections}: of it Traefik's", h["traefik"]["traefik_cpu_ms_per_write"], "ms"))

    lag = results.get("lag")
    if lag:
        S = f"3 propagation lag, outbox.created_at -> scored_item.applied_at, at {lag['rate']:.0f} req/s"
        rows.append(_row(S, "achieved load (half the best write rate)", lag["achieved_rate"], "req/s"))
        rows.append(_limit_row(S, "lag p50", lag["p50_ms"], "ms", TARGET_LAG_P50_MS))
        rows.append(_limit_row(S, "lag p99", lag["p99_ms"], "ms", TARGET_LAG_P99_MS))
        rows.append(_row(S, "lag max", lag["max_ms"], "ms"))

    e2e = results.get("e2e")
    if e2e:
        S = f"4 end to end, c={e2e['connections']}, {results['params']['e2e_seconds']} s of load"
        rows.append(_row(S, "writes answered 201 and applied in score, per second", e2e["writes_per_sec"], "writes/s"))
        rows.append(_row(S, "errors per run", e2e["errors"], "count"))

    out = results.get("outages")
    if out:
        S = f"5 outbox drain after a broker outage ({out['rows']} rows)"
        rows.append(_row(S, "rows published per second (first to last publish)", out["drain_rate"], "rows/s"))
        rows.append(
            _row(
                S,
                "same, counting from the broker start command (boot + reconnect included)",
                out["drain_rate_from_broker_start"],
                "rows/s",
            )
        )
        S = f"6 replica catch-up ({out['rows']} queued events)"
        rows.append(_row(S, "events applied per second (first to last apply)", out["catch_up_rate"], "events/s"))
        rows.append(
            _row(
                S,
                "same, counting from process start (start-up included)",
                out["catch_up_rate_from_process_start"],
                "events/s",
            )
        )

    rss = results.get("peak_rss_mb")
    if rss:
        S = "7 peak resident memory (VmHWM) at the end"
        for name, value in sorted(rss.items()):
            note = "since its restart for the catch-up" if name == "score" and out else ""
            rows.append(_limit_row(S, name, {"median": value, "n": 1}, "MB", TARGET_RSS_MB, note))

    S = "8 ratios to the bounds (medians) and targets"
    pg_bound = None
    if pg:
        pg_bound = max(pg["clients_1"]["median"], pg["clients_8"]["median"])
    if e2e and pg_bound:
        rows.append(
            _ratio_row(
                S,
                "end to end / PG commits (best of 1, 8 clients)",
                e2e["writes_per_sec"]["median"],
                pg_bound,
                TARGET_E2E_VS_PG,
            )
        )
    if out and amqp:
        drain = out["drain_rate"]["median"]
        for qtype, label in (("quorum", "quorum (the relay's real queues)"), ("classic", "classic durable")):
            rows.append(
                _ratio_row(
                    S,
                    f"outbox drain / publish-confirm-each, {label}",
                    drain,
                    amqp[qtype]["confirm_each"]["median"],
                    TARGET_DRAIN_VS_CONFIRM_EACH,
                )
            )
        for qtype in ("quorum", "classic"):
            rows.append(
                _ratio_row(S, f"outbox drain / batched confirms, {qtype}", drain, amqp[qtype]["batched"]["median"])
            )
    if out and pg_bound:
        rows.append(
            _ratio_row(
                S,
                "catch-up / PG commits (best of 1, 8 clients)",
                out["catch_up_rate"]["median"],
                pg_bound,
                TARGET_CATCH_UP_VS_PG,
            )
        )
    if out and amqp:
        rows.append(
            _ratio_row(
                S,
                "catch-up / RabbitMQ consume + ack, quorum",
                out["catch_up_rate"]["median"],
                amqp["quorum"]["consume_ack"]["median"],
            )
        )

    ryw = results.get("read_your_writes")
    if ryw:
        S = "10 read-your-writes: a write, then its score read with ?min_sequence= at once"
        for label, title in (("idle", "idle"), ("loaded", "under writes at half the best rate")):
            r = ryw[label]
            rows.append(_row(S, f"{title}: gateway's wait p50", r["wait_p50_ms"], "ms"))
            rows.append(_row(S, f"{title}: gateway's wait p99", r["wait_p99_ms"], "ms"))
            note = f"of {r['reads_per_round']} per run"
            rows.append(_row(S, f"{title}: reads answered stale", r["stale"], "count", note))
            rows.append(
                _ratio_row(
                    S,
                    f"{title}: read p50 with the wait / plain read p50",
                    r["read_p50_ms"]["median"],
                    r["plain_read_p50_ms"]["median"],
                    note="the cost of seeing one's own write",
                )
            )

    rebuilt = results.get("rebuild")
    if rebuilt:
        S = "11 replica rebuild: score's tables emptied, refilled from person's history (python -m ops.rebuild's loop)"
        rows.append(_row(S, "history events", rebuilt["events"], "count"))
        rows.append(_row(S, "events applied per second", rebuilt["rate"], "events/s"))
        if out:
            rows.append(
                _ratio_row(
                    S,
                    "rebuild / catch-up from the queues",
                    rebuilt["rate"]["median"],
                    out["catch_up_rate"]["median"],
                )
            )
        if pg_bound:
            rows.append(
                _ratio_row(S, "rebuild / PG commits (best of 1, 8 clients)", rebuilt["rate"]["median"], pg_bound)
            )

    if e2e and e2e.get("cpu_ms_per_write"):
        S = "9 CPU per write during the end-to-end runs (where the time goes; 2 cores)"
        cpu = e2e["cpu_ms_per_write"]
        labels = {
            "gateway": "gateway",
            "person": "person",
            "score": "score",
            "postgres": "PostgreSQL (all backends)",
            "rabbitmq": "RabbitMQ (private node)",
            "wrk": "wrk (load generator)",
            "bench": "this bench process (polling)",
            "other": "the rest: kernel (loopback TCP, softirq), steal, other processes",
            "machine_busy": "whole machine, busy",
        }
        for name, label in labels.items():
            if name in cpu:
                rows.append(_row(S, label, cpu[name], "ms CPU/write"))
    rows.extend(compare_rows(results.get("compare")))
    rows.extend(soak_rows(results.get("soak")))
    return rows


def soak_rows(soak: dict | None) -> list:
    """``make soak``: each database's growth per write once running, per table in the note."""
    if not soak:
        return []
    S = (
        f"10 soak: {soak['writes']} writes over {soak['minutes']:g} min at {soak['rate']:g}/s "
        f"({soak['people']} people); growth over the second half"
    )
    rows = []
    for db, tables in soak["kb_per_1000_writes"].items():
        note = ", ".join(
            f"{t} {_fmt(kb)}" for t, kb in sorted(tables.items(), key=lambda item: -abs(item[1])) if t != "total" and kb
        )
        rows.append(_row(S, f"{db}: KB kept per 1,000 writes", {"median": tables["total"]}, "KB", note))
    rows.append(_row(S, "score's inbox rows per person", {"median": soak["score_inbox_rows_per_person"]}, "rows"))
    rows.append(_row(S, "person's history rows at the end", {"median": soak["history_rows_at_end"]}, "rows"))
    for when, label in (("with_cleanup", "with a retention cleanup round"), ("without", "without one")):
        found = soak["cleanup_p99"][when]
        if found["loads"]:
            note = f"{found['loads']} loads, worst {_fmt(found['max_p99_ms'])} ms"
            rows.append(_row(S, f"write p99 of the loads {label}", {"median": found["median_p99_ms"]}, "ms", note))
    return rows


def compare_rows(compare: dict | None) -> list:
    """This system against the plain Nameko pipeline, at each number of connections."""
    if not compare or "plain" not in compare or "system" not in compare:
        return []
    rows = []
    S = "10 against the plain Nameko pipeline (same run, alternating rounds; target: ratios >= 100 %, CPU <= 100 %)"
    for c in sorted(compare["system"], key=int):
        ours, plain = compare["system"][c], compare["plain"][c]
        for name, data in (("plain", plain), ("system", ours)):
            refused = data["refused_share"]["median"] or 0
            note = f"p50 {_fmt(data['p50_ms']['median'])} ms, p99 {_fmt(data['p99_ms']['median'])} ms (accepted)"
            if refused:
                note += f", refused {refused * 100:.1f} %"
            if data["lost"]:
                note += f", {data['lost']} writes never applied"
            rows.append(_row(S, f"c={c} {name}: writes/s applied", data["writes_per_sec"], "writes/s", note))
            rows.append(_row(S, f"c={c} {name}: CPU per write, all", data["cpu_ms_per_write_total"], "ms CPU/write"))
            messages = data.get("messages_per_write") or {}
            if messages:
                note = ", ".join(f"{k} {_fmt(v['median'])}" for k, v in messages.items() if k != "published")
                metric = f"c={c} {name}: broker messages published per write"
                rows.append(_row(S, metric, messages["published"], "msgs/write", note))
        speed = _ratio_row(
            S,
            f"c={c} writes/s: system / plain",
            ours["writes_per_sec"]["median"],
            plain["writes_per_sec"]["median"],
            1.0,
        )
        cpu_ratio = (ours["cpu_ms_per_write_total"]["median"] or 0) / (plain["cpu_ms_per_write_total"]["median"] or 1)
        rows.append(speed)
        rows.append(
            _row(
                S,
                f"c={c} CPU per write: system / plain",
                {"median": cpu_ratio * 100},
                "%",
                target="<= 100%",
                status="PASS" if cpu_ratio <= 1 else "MISS",
            )
        )
        p50s = (ours["p50_ms"]["median"], plain["p50_ms"]["median"])
        if c in (1, "1") and None not in p50s:
            rows.append(
                _row(
                    S,
                    "c=1 write p50: system / plain",
                    {"median": p50s[0] / p50s[1] * 100},
                    "%",
                    target="<= 100%",
                    status="PASS" if p50s[0] <= p50s[1] else "MISS",
                )
            )
    for name in ("plain", "system"):
        for db, counts in (compare[name][next(iter(compare[name]))].get("rows_per_write") or {}).items():
            note = ", ".join(f"{k} {_fmt(v)}" for k, v in counts.items())
            total = {"median": sum(counts.values())}
            rows.append(_row(S, f"{name}: {db} rows written per write (all rounds)", total, "rows/write", note))
        for db, tables in (compare[name][next(iter(compare[name]))].get("kb_per_1000_writes") or {}).items():
            note = ", ".join(f"{t} {_fmt(kb)}" for t, kb in sorted(tables.items(), key=lambda item: -item[1]) if kb)
            total = {"median": sum(tables.values())}
            rows.append(_row(S, f"{name}: {db} KB kept per 1,000 writes (all rounds)", total, "KB", note))
    rows.extend(ab_rows(compare))
    rows.extend(cluster_rows(compare))
    return rows


def cluster_rows(compare: dict) -> list:
    """This system on a three-node RabbitMQ cluster against the single node, same run."""
    from bench.compare import CLUSTER

    if CLUSTER not in compare:
        return []
    rows = []
    S = "12 a three-node RabbitMQ cluster against the single node, same run, alternating rounds"
    for c in sorted(compare["system"], key=int):
        one, three = compare["system"][c], compare[CLUSTER][c]
        rows.append(_row(S, f"c={c} single node: writes/s applied", one["writes_per_sec"], "writes/s"))
        rows.append(_row(S, f"c={c} three nodes: writes/s applied", three["writes_per_sec"], "writes/s"))
        rows.append(
            _ratio_row(
                S,
                f"c={c} writes/s: three nodes / single node",
                three["writes_per_sec"]["median"],
                one["writes_per_sec"]["median"],
            )
        )
        was, now = one["cpu_ms_per_write_total"]["median"], three["cpu_ms_per_write_total"]["median"]
        rows.append(
            _row(
                S,
                f"c={c} CPU per write, all: single -> three nodes",
                {"median": now},
                "ms CPU/write",
                f"single {_fmt(was)} ms",
            )
        )
    return rows


def ab_rows(compare: dict) -> list:
    """This system against itself at another revision (``--ab REV``), in the same run."""
    before = next((name for name in compare if name.startswith("system@")), None)
    if before is None:
        return []
    rows = []
    S = f"11 A/B: {before} (before) against the working tree (after), same run, alternating rounds"
    for c in sorted(compare["system"], key=int):
        a, b = compare[before][c], compare["system"][c]
        rows.append(_row(S, f"c={c} before: writes/s applied", a["writes_per_sec"], "writes/s"))
        rows.append(_row(S, f"c={c} after: writes/s applied", b["writes_per_sec"], "writes/s"))
        rows.append(
            _ratio_row(
                S, f"c={c} writes/s: after / before", b["writes_per_sec"]["median"], a["writes_per_sec"]["median"]
            )
        )
        for name in sorted(set(a["cpu_ms_per_write"]) | set(b["cpu_ms_per_write"])):
            was = (a["cpu_ms_per_write"].get(name) or {}).get("median")
            now = (b["cpu_ms_per_write"].get(name) or {}).get("median")
            rows.append(
                _row(
                    S,
                    f"c={c} CPU per write, {name}: before -> after",
                    {"median": now},
                    "ms CPU/write",
                    f"before {_fmt(was)} ms",
                )
            )
        was, now = a["cpu_ms_per_write_total"]["median"], b["cpu_ms_per_write_total"]["median"]
        rows.append(
            _row(
                S,
                f"c={c} CPU per write, all: before -> after",
                {"median": now},
                "ms CPU/write",
                f"before {_fmt(was)} ms",
            )
        )
    return rows


def _fmt(value, unit="") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    value = float(value)
    if unit == "count":
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def render(rows: list, header: str) -> str:
    width = max(len(r["metric"]) for r in rows) + 2
    lines = [header]
    line = f"{'':{width}} {'median':>9} {'min':>9} {'max':>9}  {'unit':<12} {'n':>2}  {'target':<12} {'':4}  note"
    lines.append(line)
    section = None
    for r in rows:
        if r["section"] != section:
            section = r["section"]
            lines.append(f"-- {section} " + "-" * max(0, len(line) - len(section) - 4))
        unit = r["unit"]
        lines.append(
            f"{r['metric']:<{width}} {_fmt(r['median'], unit):>9} {_fmt(r['min'], unit):>9} {_fmt(r['max'], unit):>9}  "
            f"{r['unit']:<12} {r['n'] or '':>2}  {r.get('target') or '':<12} {r.get('status') or '':4}  "
            f"{r['note']}".rstrip()
        )
    return "\n".join(lines)


def write_json(path: Path, meta: dict, rows: list, results: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"meta": meta, "rows": rows, "results": results}, indent=2, default=str) + "\n")
