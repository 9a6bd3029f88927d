"""Say when the system answers: ``make run`` prints the API's address once the
gateway's ``/health`` is 200, or says what is still failing after a bound.

    python -m ops.ready [--url http://localhost:8000] [--timeout 60]
"""

import argparse
import sys
import time

import requests


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://localhost:8000")
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args(argv)
    deadline = time.monotonic() + args.timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            response = requests.get(f"{args.url}/health", timeout=5)
            if response.status_code == 200:
                print(f"\nReady: the API is on {args.url}  (Ctrl-C stops all three services)", flush=True)
                print(
                    "try:  curl -i -H 'Content-Type: application/json' "
                    f"{args.url}/person --data @payloads/new_person.json\n",
                    flush=True,
                )
                return 0
            last = "; ".join(response.json().get("problems", [])) or f"status {response.status_code}"
        except (requests.RequestException, ValueError) as exc:
            last = type(exc).__name__
        time.sleep(0.2)
    print(f"\nNot ready after {args.timeout:g} s: {last}. The services' output above says why.", flush=True)
    return 1


if __name__ == "__main__":
    sys.exit(main())
