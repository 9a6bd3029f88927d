"""Exit 0 when a service answers its ``health`` RPC: ``python -m ops.ping person``.

Used as the container healthcheck of person and score, which have no HTTP port.
"""

import argparse
import json
import sys

import ops.quiet  # noqa: F401  (first: it silences eventlet's import-time banner)

# isort: split
import eventlet

eventlet.monkey_patch()  # noqa: E402  (the standalone proxy needs a patched socket)

from nameko.standalone.rpc import ClusterRpcProxy  # noqa: E402

from ops.config import load_config  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("service", choices=["person", "score"])
    parser.add_argument("--config", help="path to config.yml (default: the repository's)")
    parser.add_argument("--timeout", type=float, default=5.0)
    args = parser.parse_args(argv)
    try:
        with ClusterRpcProxy(load_config(args.config), timeout=args.timeout) as rpc:
            health = getattr(rpc, args.service).health()
    except Exception as exc:
        print(f"{args.service} unhealthy: {exc!r}", file=sys.stderr)
        return 1
    print(json.dumps(health))
    return 0


if __name__ == "__main__":
    sys.exit(main())
