"""Rebuilding score's replica from person's current state and event history: what its RPC
(``score.rebuild_step``) takes and raises, and the loop that drives it to the
head, shared by score's own ``rebuild`` and the command line
(``python -m ops.rebuild``). The steps themselves are ``score/rebuild.py``.
"""

import logging
import time
from collections.abc import Callable

from nameko.exceptions import deserialize_to_instance

_log = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 1000
MAX_PAGE_SIZE = 5000  # person's own cap on a history page
MALFORMED_LISTED = 100  # positions of malformed events a step returns, at most


@deserialize_to_instance
class RebuildError(Exception):
    """A rebuild step could not run (bad argument, person not answering).
    Nothing after the last checkpoint was skipped: run it again."""


def run(do_step: Callable, from_position=None, page_size: int = DEFAULT_PAGE_SIZE, on_step=None) -> dict:
    """Steps through person's current state (when the rebuild starts or
    resumes there), then the history's tail up to the head as of the state's
    last page (or the first step, for a tail alone); returns the totals.

    ``do_step(from_position, page_size)`` is score's ``rebuild_step``: its
    own (``score.rebuild``), or, on the command line, the RPC call to it;
    after the first, each step goes on from the checkpoint the one before
    saved (``from_position`` None). ``on_step(result, totals)``, if given, is
    called after each step (the command line's progress bar). What commits
    after the target comes live, or with the next rebuild (see
    ``score/rebuild.py``), so the loop does not chase it.
    ``events_per_second`` counts every event processed (applied, skipped or malformed).
    """
    started = time.monotonic()
    result = do_step(from_position, page_size)
    totals = {
        "from_position": result["from_position"],
        "target_position": result["head_position"],
        "pages": 1,
        **{key: result[key] for key in ("fetched", "applied", "skipped", "malformed", "malformed_positions")},
    }
    if on_step:
        on_step(result, totals)
    # An empty page of the tail ends it too: nothing is left below the target.
    while result["phase"] == "state" or (result["position"] < totals["target_position"] and result["fetched"]):
        result = do_step(None, page_size)
        if result["phase"] == "state":
            totals["target_position"] = max(totals["target_position"], result["head_position"])
        totals["pages"] += 1
        for key in ("fetched", "applied", "skipped", "malformed"):
            totals[key] += result[key]
        totals["malformed_positions"] = (totals["malformed_positions"] + result["malformed_positions"])[
            :MALFORMED_LISTED
        ]
        if on_step:
            on_step(result, totals)
    seconds = time.monotonic() - started
    totals.update(
        position=result["position"],
        seconds=round(seconds, 3),
        events_per_second=round(totals["fetched"] / seconds, 1) if seconds > 0 else None,
    )
    _log.info(
        "rebuild done: positions %d to %d, %d events in %.1f s (%s events/s), applied %d, skipped %d, malformed %d",
        totals["from_position"],
        totals["position"],
        totals["fetched"],
        seconds,
        totals["events_per_second"],
        totals["applied"],
        totals["skipped"],
        totals["malformed"],
    )
    return totals
