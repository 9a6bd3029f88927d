"""Dead letters from the command line: list, inspect, replay, purge.

    deadletters list [--event-id ID]
    deadletters inspect ID
    deadletters replay [--event-id ID | --all]
    deadletters purge  (--event-id ID | --all)

A thin client of the consuming service's RPC methods (``list_dead_letters`` and
friends, the same ones ``nameko shell`` offers), so it needs only the broker:
``AMQP_URI`` or ``--config``. Prints JSON. With the broker or the service not
running, or ``inspect`` of an event with no dead letter, it says so in one
line and exits 1, at once.
"""

import argparse
import json
import sys

import ops.quiet  # noqa: F401  (first: it silences eventlet's import-time banner)

# isort: split
import eventlet

eventlet.monkey_patch()  # noqa: E402  (the standalone proxy needs a patched socket)

from nameko.exceptions import RemoteError, RpcTimeout  # noqa: E402
from nameko.standalone.rpc import ClusterRpcProxy  # noqa: E402

from ops.cli import Unreachable, check_consumers, fail  # noqa: E402
from ops.config import load_config  # noqa: E402

PROG = "deadletters"


def build_parser():
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--config", help="path to config.yml (default: the repository's)")
    parser.add_argument("--service", default="score", help="the consuming service (default: score)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the service")
    commands = parser.add_subparsers(dest="command", required=True)

    listing = commands.add_parser("list", help="summaries: event id, type, reason, attempts, failure times")
    listing.add_argument("--event-id")

    inspect = commands.add_parser("inspect", help="one event's dead letters with body and headers")
    inspect.add_argument("event_id")

    for name, what in (("replay", "send back to their handler"), ("purge", "delete for good")):
        command = commands.add_parser(name, help=f"{what}: one event's dead letters, or --all")
        target = command.add_mutually_exclusive_group(required=True)
        target.add_argument("--event-id")
        target.add_argument("--all", action="store_true")
    return parser


METHODS = {
    "list": "list_dead_letters",
    "inspect": "inspect_dead_letter",
    "replay": "replay_dead_letters",
    "purge": "purge_dead_letters",
}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    config = load_config(args.config)
    try:
        check_consumers(config["AMQP_URI"], (args.service,))
        with ClusterRpcProxy(config, timeout=args.timeout) as rpc:
            method = getattr(getattr(rpc, args.service), METHODS[args.command])
            result = method(args.event_id)
    except Unreachable as exc:
        return fail(PROG, str(exc))
    except RpcTimeout:
        return fail(PROG, f"{args.service} did not answer within {args.timeout:g} s.")
    except RemoteError as exc:
        return fail(PROG, f"{args.service} failed: {exc}")
    if args.command == "inspect" and not result:
        return fail(PROG, f"no dead letter of event {args.event_id}.")
    json.dump(result, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
