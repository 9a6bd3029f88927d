"""``nameko shell --config config.yml`` against the running services.

The shell reads its commands from stdin when stdin is not a TTY (nameko's plain
``code.interact`` console, which stops at the first exception), so a test can
pipe a session into it. Results are printed as one ``RESULT <json>`` line on
stdout (after the console's prompts); the banner goes to stderr.
"""

import json
import subprocess

import pytest
import requests

from harness.api import HTTP_TIMEOUT
from harness.processes import NAMEKO, ROOT

pytestmark = pytest.mark.e2e

# One statement per line; a compound statement ends with a blank line (as typed).
SESSION = """\
import json, time
seed = {"cpf": "529.982.247-25", "name": "abc", "address": "abc"}
seed["date_of_birth"] = "2019-06-15T19:23:55-03:00"
person = n.rpc.person.create_person(seed)
cpf = person["cpf"]
income = n.rpc.person.add_income(cpf, {"type": "renting", "value": 1000})
asset = n.rpc.person.add_asset(cpf, {"type": "apartment", "value": 100000})
debt = n.rpc.person.add_debt(cpf, {"value": 1000})
def poll_score(cpf, expected, timeout=10):
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = n.rpc.score.get_score(cpf)
        except Exception as exc:
            result = {"error": type(exc).__name__, "detail": str(exc)}
        if result.get("score") == expected or time.monotonic() > deadline:
            return result
        time.sleep(0.1)

score = poll_score(cpf, 4970)
try:
    n.rpc.person.create_person(seed)
    duplicate = None
except Exception as exc:
    duplicate = {"type": type(exc).__name__, "exc_type": getattr(exc, "exc_type", None), "text": str(exc)}

fetched = n.rpc.person.get_person("529.982.247-25")
out = dict(person=person, income=income, asset=asset, debt=debt, score=score, duplicate=duplicate)
out["fetched"] = fetched
print("RESULT " + json.dumps(out))
n.disconnect()
"""


def run_shell(env, session, timeout=90):
    return subprocess.run(
        [NAMEKO, "shell", "--config", "config.yml"],
        cwd=ROOT,
        env=env,
        input=session,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def result_of(proc):
    # the console's prompts (">>> ", "... ") share stdout with what the session prints
    lines = [line.split("RESULT ", 1)[1] for line in proc.stdout.splitlines() if "RESULT " in line]
    assert len(lines) == 1, f"rc={proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return json.loads(lines[0])


def test_shell_session_gives_the_seed_score(system, api):
    proc = run_shell(system.env, SESSION)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    out = result_of(proc)

    assert out["person"]["cpf"] == "52998224725"
    assert out["person"]["date_of_birth"] == "2019-06-15"
    assert (out["income"]["type"], out["income"]["value"]) == ("renting", "1000.00")
    assert (out["asset"]["type"], out["asset"]["value"]) == ("apartment", "100000.00")
    assert out["debt"]["value"] == "1000.00" and "type" not in out["debt"]

    assert out["score"].get("score") == 4970, out["score"]
    assert out["score"]["breakdown"] == {"income": 20, "asset": 5000, "debt": -50}
    assert out["score"]["cpf"] == "52998224725"

    # the shell sees the same typed errors the gateway maps to HTTP codes
    assert out["duplicate"] is not None
    assert "PersonAlreadyExists" in (out["duplicate"]["type"], out["duplicate"]["exc_type"]), out["duplicate"]

    assert [i["value"] for i in out["fetched"]["incomes"]] == ["1000.00"]
    assert [a["value"] for a in out["fetched"]["assets"]] == ["100000.00"]
    assert [d["value"] for d in out["fetched"]["debts"]] == ["1000.00"]

    # and the HTTP API agrees with what the shell did
    over_http = requests.get(f"{api}/52998224725/score", timeout=HTTP_TIMEOUT)
    assert over_http.status_code == 200, over_http.text
    assert over_http.json()["score"] == 4970


def test_shell_stops_at_a_failing_call(system, api):
    """Non-interactive sessions must not carry on past an error (nameko's console
    re-raises when stdin is not a TTY): a script sees a non-zero exit code."""
    proc = run_shell(system.env, 'n.rpc.person.get_person("123")\nprint("RESULT {}")\n')
    assert proc.returncode != 0
    assert "RESULT" not in proc.stdout
    assert "InvalidInput" in proc.stderr, proc.stderr
