"""``make soak``: writes at a steady rate for minutes, and every table's size over time.

What a system that keeps running costs in storage: wrk writes incomes over the
bench's people at a fixed rate, and every ``interval`` seconds each table of
both databases is measured on disk (``pg_total_relation_size``, indexes and
TOAST included) with its rows, beside the writes person holds so far. A table
that levels off grows by nothing per write once the run is past its start;
one that does not keeps growing by the same amount per write. The figure per
table is its growth over the run's second half, in KB per 1,000 writes (the
first half holds the warm-up and the people's first rows). The picture is
each table's size against time.
"""

import logging
import threading
import time

from bench import chart, wrk
from bench.compare import TABLE_SIZES_SQL
from bench.system import BenchSystem

log = logging.getLogger("bench")

_ROWS_SQL = "SELECT relname, n_live_tup FROM pg_stat_user_tables"


def _sample(system: BenchSystem, started: float) -> dict:
    return {
        "seconds": round(time.monotonic() - started, 1),
        "writes": system.person("SELECT count(*) FROM income")[0][0],
        "bytes": {
            "person": dict(system.person(TABLE_SIZES_SQL)),
            "score": dict(system.score(TABLE_SIZES_SQL)),
        },
        "rows": {
            "person": dict(system.person(_ROWS_SQL)),
            "score": dict(system.score(_ROWS_SQL)),
        },
    }


def growth(samples: list) -> dict:
    """Per database, per table, and each database's total: KB per 1,000
    writes between the middle sample and the last one."""
    mid, last = samples[len(samples) // 2], samples[-1]
    writes = last["writes"] - mid["writes"]
    out = {}
    for db, tables in last["bytes"].items():
        per_table = {
            table: (size - mid["bytes"][db].get(table, 0)) / 1024 / writes * 1000 if writes else float("nan")
            for table, size in sorted(tables.items())
        }
        out[db] = {**per_table, "total": sum(per_table.values())}
    return out


def soak(system: BenchSystem, people: list, minutes: float, rate: float, connections: int, interval: float) -> dict:
    """Write at ``rate``/s for ``minutes``; the samples, the growth, and the
    score inbox's rows per person at the end."""
    seconds = minutes * 60
    system.wait_quiet()
    started = time.monotonic()
    samples = [_sample(system, started)]
    load = threading.Thread(
        target=wrk.run_wrk,
        args=(system.services.url, people, seconds, connections),
        kwargs={"rate": rate, "seed": 7000},
        daemon=True,
    )
    load.start()
    while load.is_alive():
        load.join(interval)
        samples.append(_sample(system, started))
        log.info(
            "soak %5.0f s: %d writes, person %.1f MB, score %.1f MB",
            samples[-1]["seconds"],
            samples[-1]["writes"],
            sum(samples[-1]["bytes"]["person"].values()) / 2**20,
            sum(samples[-1]["bytes"]["score"].values()) / 2**20,
        )
    system.wait_quiet()
    samples.append(_sample(system, started))
    known = samples[-1]["rows"]["score"].get("known_person", 0)
    return {
        "minutes": minutes,
        "rate": rate,
        "people": len(people),
        "writes": samples[-1]["writes"] - samples[0]["writes"],
        "kb_per_1000_writes": growth(samples),
        "score_inbox_rows_per_person": known / len(people),
        "samples": samples,
    }


def draw(result: dict, path, title: str):
    """A PNG of each table's size over the run (one panel per database); None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    samples = result["samples"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    minutes = [s["seconds"] / 60 for s in samples]
    for ax, db in zip(axes, ("person", "score"), strict=True):
        for table in sorted(samples[-1]["bytes"][db]):
            sizes = [s["bytes"][db].get(table, 0) / 2**20 for s in samples]
            if sizes[-1] >= 0.05:  # tables that stay under 50 KB are left out of the picture
                ax.plot(minutes, sizes, label=table)
        ax.set_title(f"{db} database")
        ax.set_xlabel("minutes")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("MB on disk (pg_total_relation_size)")
    return chart.save(fig, path, title)
