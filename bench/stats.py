"""Medians with their spread, and percentiles of samples."""

import math
import statistics


def summary(values) -> dict:
    """``{"median", "min", "max", "n", "values"}`` of the finite values given."""
    values = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not values:
        return {"median": None, "min": None, "max": None, "n": 0, "values": []}
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
        "values": values,
    }


def percentile(sorted_values: list, p: float) -> float:
    """The ``p``-th percentile (0..100) of already sorted values, nearest-rank."""
    if not sorted_values:
        return float("nan")
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def rate_from_timestamps(count_after_first: int, first, last) -> float:
    """Items per second from timestamps: those stamped after the first, over last - first.

    Items stamped in one batch share a timestamp, so the first batch (whose start
    is not recorded) is left out of the count, not just its time.
    """
    if first is None or last is None or last <= first:
        return float("nan")
    return count_after_first / (last - first).total_seconds()
