"""Rebuild score's replica from person's current state and event history, with a progress bar.

    python -m ops.rebuild [--config config.yml] [--from-start | --from-position N] [--page-size N]
    rebuild-replica ...     (the same, as the installed console script)

Calls ``score.rebuild_step`` page after page (the RPC method that ``nameko
shell`` offers too, see score/rebuild.py): from the start (--from-start),
person's current state, then its history's tail up to the head as of the
state's last page; what person writes meanwhile reaches score live (or with
the next run), and an event that comes both ways is applied once. With
--from-position N, the history's tail after N (refused if person's retention
deleted events after N). Without either it resumes from score's checkpoint.

Needs the broker (``AMQP_URI`` or --config) and person and score running.
Shows the events done, the phase and the history position on stderr; prints a
one-line summary on stdout. Exit status: 0 done
(malformed history events, if any, are listed here and logged by score with
their positions), 1 broker, score or person unreachable or a page failed
(running it again resumes from the checkpoint), 2 bad arguments, 130
interrupted (also resumable).
"""

import argparse
import sys

import ops.quiet  # noqa: F401  (first: it silences eventlet's import-time banner)

# isort: split
import eventlet  # noqa: E402

eventlet.monkey_patch()  # noqa: E402  (the standalone proxy needs a patched socket)

from nameko.exceptions import RemoteError, RpcTimeout, UnknownService  # noqa: E402
from nameko.standalone.rpc import ClusterRpcProxy  # noqa: E402
from tqdm import tqdm  # noqa: E402

from contracts import rebuild as rebuilder  # noqa: E402
from contracts.rebuild import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, RebuildError  # noqa: E402
from ops.cli import Unreachable, check_consumers, fail  # noqa: E402
from ops.config import load_config  # noqa: E402
from reliable_events.rpc import BROKER_ERRORS  # noqa: E402

PROG = "rebuild-replica"


def build_parser():
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", help="path to config.yml (default: the repository's)")
    start = parser.add_mutually_exclusive_group()
    start.add_argument("--from-start", action="store_true", help="from person's current state, then the history")
    start.add_argument("--from-position", type=int, metavar="N", help="the history's tail after position N")
    parser.add_argument(
        "--page-size",
        type=int,
        default=DEFAULT_PAGE_SIZE,
        metavar="N",
        help=f"events per page, 1..{MAX_PAGE_SIZE} (default {DEFAULT_PAGE_SIZE})",
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for one page (default 60)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar, only the summary")
    return parser


def run(config: dict, from_position, page_size: int, timeout: float, progress: bool) -> dict:
    """Step through person's state, then the history's tail to the head
    (score.rebuild's own loop, each step an RPC to score); returns the totals."""
    check_consumers(config["AMQP_URI"], ("score", "person"))
    bar = None

    def show(result, totals):
        nonlocal bar
        if bar is None:
            bar = tqdm(unit="events", unit_scale=True, dynamic_ncols=True, disable=not progress, file=sys.stderr)
        bar.set_description(f"rebuild: {result['phase']}", refresh=False)
        bar.update(result["fetched"])
        bar.set_postfix_str(
            f"history at {result['position']} of {totals['target_position']}, applied={totals['applied']}, "
            f"skipped={totals['skipped']}",
            refresh=False,
        )

    try:
        with ClusterRpcProxy(config, timeout=timeout) as rpc:
            return rebuilder.run(
                lambda start, size: _step(rpc, start, size, timeout), from_position, page_size, on_step=show
            )
    except BROKER_ERRORS as exc:
        raise Unreachable(f"lost the message broker ({exc}); run again to resume from the checkpoint.") from None
    finally:
        if bar is not None:
            bar.close()


def _step(rpc, from_position, page_size, timeout) -> dict:
    try:
        return rpc.score.rebuild_step(from_position, page_size)
    except RpcTimeout:
        raise Unreachable(f"score did not answer a page within {timeout:g} s; run again to resume.") from None
    except UnknownService:
        raise Unreachable("score is not running.") from None


def summary(totals: dict) -> str:
    return (
        f"rebuilt score from person, history to position {totals['position']}: "
        f"{totals['fetched']} events, {totals['applied']} applied, {totals['skipped']} skipped "
        f"(already applied), {totals['malformed']} malformed, in {totals['seconds']:.1f} s "
        f"({totals['events_per_second']:.0f} events/s)"
    )


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not 1 <= args.page_size <= MAX_PAGE_SIZE:
        parser.error(f"--page-size must be between 1 and {MAX_PAGE_SIZE}")
    if args.from_position is not None and args.from_position < 0:
        parser.error("--from-position must be >= 0")
    from_position = 0 if args.from_start else args.from_position  # None: from score's checkpoint
    tqdm.monitor_interval = 0  # no monitor thread (a green one under eventlet)
    try:
        totals = run(load_config(args.config), from_position, args.page_size, args.timeout, not args.no_progress)
    except Unreachable as exc:
        return fail(PROG, str(exc))
    except RebuildError as exc:
        return fail(PROG, f"score could not do a page: {exc}")
    except RemoteError as exc:
        return fail(PROG, f"a page failed in score ({exc}); run again to resume from the checkpoint.")
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; run again to resume from the checkpoint.", file=sys.stderr)
        return 130
    print(summary(totals), flush=True)
    if totals["malformed"]:
        listed = ", ".join(map(str, totals["malformed_positions"][:20]))
        more = " ..." if totals["malformed"] > 20 else ""
        print(
            f"{PROG}: {totals['malformed']} malformed history events were not applied, at positions {listed}{more} "
            "(score's log has each one's reason)",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
