"""``make soak``: writes at a steady rate for minutes, and every table's size over time.

What a system that keeps running costs in storage: wrk writes incomes over the
bench's people at a fixed rate, and every ``interval`` seconds each table of
both databases is measured on disk (``pg_total_relation_size``, indexes and
TOAST included) with its rows, beside the writes person holds so far. A table
that levels off grows by nothing per write once the run is past its start;
one that does not keeps growing by the same amount per write. The figure per
table is its growth over the run's second half, in KB per 1,000 writes (the
first half holds the warm-up and the people's first rows), the slope of its
size against the writes. The picture is
each table's size against time. With ``--retention S`` person keeps its
event history S seconds (``EVENT_HISTORY_RETENTION``): the history then
levels off too, and each load's write p99 is set beside whether a cleanup
round ran during it.
"""

import logging
import statistics
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
        "history_rows": system.person("SELECT count(*) FROM outbox")[0][0],
        # Moves with every retention batch: which loads a cleanup round ran in.
        "deleted_through": system.person("SELECT coalesce(max(deleted_through), 0) FROM history_retention")[0][0],
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
    writes over the second half of the samples, as the least-squares slope
    of size against writes (a table the retention trims is a saw-tooth: two
    samples alone would land anywhere on its teeth)."""
    half = samples[len(samples) // 2 :]
    out = {}
    for db, tables in samples[-1]["bytes"].items():
        per_table = {
            table: _slope([s["writes"] for s in half], [s["bytes"][db].get(table, 0) for s in half]) / 1024 * 1000
            for table in sorted(tables)
        }
        out[db] = {**per_table, "total": sum(per_table.values())}
    return out


def _slope(xs: list, ys: list) -> float:
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / spread if spread else float("nan")


def soak(system: BenchSystem, people: list, minutes: float, rate: float, connections: int, interval: float) -> dict:
    """Write at ``rate``/s for ``minutes``, in back-to-back loads of
    ``interval`` seconds with a sample after each; the samples (each with its
    load's latency, the history rows the retention deleted meanwhile (rows
    before + writes - rows after, to a row or so: the two counts are not one
    snapshot) and whether a cleanup round ran), the growth, the score inbox's
    rows per person at the end, and write p99 with and without a cleanup round."""
    system.wait_quiet()
    started = time.monotonic()
    samples = [_sample(system, started)]
    chunks = max(1, round(minutes * 60 / interval))
    for n in range(chunks):
        load = wrk.run_wrk(system.services.url, people, interval, connections, rate=rate, seed=7000 + n)
        sample = _sample(system, started)
        before = samples[-1]
        sample["history_deleted"] = (
            before["history_rows"] + (sample["writes"] - before["writes"]) - sample["history_rows"]
        )
        sample["cleanup"] = sample["deleted_through"] > before["deleted_through"]
        sample["load"] = {"created": load.created, "failed": load.failed, "p50_ms": load.p50_ms, "p99_ms": load.p99_ms}
        samples.append(sample)
        log.info(
            "soak %5.0f s: %d writes, history %d rows (%d deleted), person %.1f MB, score %.1f MB, p99 %.1f ms",
            sample["seconds"],
            sample["writes"],
            sample["history_rows"],
            sample["history_deleted"],
            sum(sample["bytes"]["person"].values()) / 2**20,
            sum(sample["bytes"]["score"].values()) / 2**20,
            load.p99_ms,
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
        "history_rows_at_end": samples[-1]["history_rows"],
        "cleanup_p99": cleanup_p99(samples),
        "samples": samples,
    }


def cleanup_p99(samples: list) -> dict:
    """Write p99 (ms) of the loads during which the retention deleted rows,
    and of the others: the median of each, and how many loads each."""
    loads = [s for s in samples if "load" in s]
    during = sorted(s["load"]["p99_ms"] for s in loads if s["cleanup"])
    others = sorted(s["load"]["p99_ms"] for s in loads if not s["cleanup"])

    def median(values):
        return statistics.median(values) if values else None

    return {
        "with_cleanup": {"loads": len(during), "median_p99_ms": median(during), "max_p99_ms": max(during or [None])},
        "without": {"loads": len(others), "median_p99_ms": median(others), "max_p99_ms": max(others or [None])},
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
