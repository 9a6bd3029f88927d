"""The shape of a score answer: score builds it (``score/replica.py``), the
gateway passes it on and reads ``applied_sequence`` for its headers."""

from datetime import datetime

from contracts.kinds import NAMES

APPLIED_SEQUENCE = "applied_sequence"


def score_answer(
    cpf: str,
    breakdown: dict[str, int],
    counts: dict[str, int],
    last_sequence: int,
    applied_sequence: int,
    updated_at: datetime | None,
) -> dict:
    """``{"cpf", "score", "breakdown", "items", "last_sequence", "applied_sequence", "updated_at"}``.

    ``breakdown``: points per kind (every kind, 0 when none); ``score`` is their
    sum. ``items``: how many items of each kind. ``last_sequence``: the highest
    of the person's events applied; ``applied_sequence``: the gapless prefix
    applied (a read of write ``n`` sees it once this is ``>= n``).
    """
    breakdown = {kind: breakdown.get(kind, 0) for kind in NAMES}
    return {
        "cpf": cpf,
        "score": sum(breakdown.values()),
        "breakdown": breakdown,
        "items": {kind: counts.get(kind, 0) for kind in NAMES},
        "last_sequence": last_sequence,
        APPLIED_SEQUENCE: applied_sequence,
        "updated_at": updated_at.isoformat() if updated_at is not None else None,
    }
