"""``make run`` itself, as a user runs it (ops/run.py under make): ready once
``/health`` through Traefik is 200; a process that dies is started again while
the others serve; Ctrl-C, SIGINT or SIGTERM to make stops every process it
started and leaves nothing running. On this session's vhost and databases and
on ports of its own, so a make run of the user's is not touched."""

import os
import re
import signal
import socket
import subprocess
import time

import pytest
import requests

from harness.api import HTTP_TIMEOUT, person_body
from harness.cpf import cpfs
from harness.processes import ROOT, TEST_HASH_KEY, free_port
from harness.waits import wait_for

pytestmark = pytest.mark.e2e


def _two_free_ports() -> int:
    """A port whose next one is free too (make run's two gateways)."""
    for _ in range(50):
        port = free_port()
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + 1))
                return port
            except OSError:
                continue
    raise RuntimeError("no two consecutive free ports")


def descendants(pid: int) -> set:
    """Every process below ``pid`` (from /proc)."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(ppid, set()).add(int(entry))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), ()):
            found.add(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class MakeRun:
    """``make run`` in a session of its own, as from a terminal."""

    def __init__(self, amqp_uri, db_uris, run_dir):
        gateway_port = _two_free_ports()
        self.api = f"http://127.0.0.1:{free_port()}"
        self.run_dir = run_dir
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("MAKE")},
            "AMQP_URI": amqp_uri,
            "PERSON_DB_URI": db_uris["person:PersonBase"],
            "SCORE_DB_URI": db_uris["score:ScoreBase"],
            "WEB_SERVER_ADDRESS": f"127.0.0.1:{gateway_port}",
            "EDGE_ADDRESS": self.api.removeprefix("http://"),
            "EDGE_OPS_ADDRESS": f"127.0.0.1:{free_port()}",
            "PERSON_METRICS_ADDRESS": "127.0.0.1:0",
            "SCORE_METRICS_ADDRESS": "127.0.0.1:0",
            "PERSONAL_DATA_HASH_KEY": TEST_HASH_KEY,
            "RUN_DIR": str(run_dir),
        }
        self.output = run_dir.parent / "make-run.out"
        self.process = subprocess.Popen(
            ["make", "--no-print-directory", "run"],
            cwd=ROOT,
            env=self.env,
            stdout=self.output.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # as a terminal's shell starts it: SIGINT not ignored
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def wait_ready(self, timeout=120):
        wait_for(lambda: "Ready:" in self.text() or self.process.poll() is not None, timeout, "make run's ready line")
        assert self.process.poll() is None, self.text()[-3000:]
        return self

    def ctl(self, *args) -> str:
        out = subprocess.run(
            ["make", "--no-print-directory", *args], cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=60
        )
        return out.stdout + out.stderr

    def pid_of(self, name) -> int:
        match = re.search(rf"^{re.escape(name)}\s+RUNNING\s+pid (\d+)", self.ctl("status"), re.M)
        return int(match.group(1)) if match else 0

    def stop(self):
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
        for pid in descendants(self.process.pid):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def make_run(amqp_uri, db_uris, clean_databases, tmp_path):
    """A make run of the test's own, to stop."""
    running = MakeRun(amqp_uri, db_uris, tmp_path / "run")
    try:
        yield running.wait_ready()
    finally:
        running.stop()


@pytest.fixture(scope="module")
def shared_make_run(amqp_uri, db_uris, tmp_path_factory):
    """One make run for the tests that leave it running."""
    running = MakeRun(amqp_uri, db_uris, tmp_path_factory.mktemp("make-run") / "run")
    try:
        yield running.wait_ready()
    finally:
        running.stop()


SIGNALS = {
    "ctrl-c": lambda make: os.killpg(make.pid, signal.SIGINT),  # the terminal signals the whole group
    "kill -INT make": lambda make: make.send_signal(signal.SIGINT),
    "kill -TERM make": lambda make: make.send_signal(signal.SIGTERM),
}


@pytest.mark.parametrize("how", SIGNALS)
def test_make_run_stops_everything_it_started(make_run, how):
    text = make_run.text()
    assert re.search(r"Ready: the API is on http://127\.0\.0\.1:\d+ \(Traefik, 2 of 2 gateways healthy\)", text)
    assert requests.get(f"{make_run.api}/health", timeout=HTTP_TIMEOUT).status_code == 200
    started = descendants(make_run.process.pid)
    names = {open(f"/proc/{pid}/cmdline").read().replace("\0", " ") for pid in started if alive(pid)}
    for program in ("supervisord", "person.service", "score.service", "gateway.service", "traefik --configFile"):
        assert any(program in name for name in names), (program, names)

    SIGNALS[how](make_run.process)
    make_run.process.wait(60)
    wait_for(lambda: not any(alive(pid) for pid in started), 10, "every process make run started to end")
    text = make_run.text()
    assert "Stopped." in text
    # make ends quietly: no "make: *** [run] Interrupt", "Terminated" or "Error"
    assert "make: ***" not in text, text[-2000:]
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{make_run.api}/health", timeout=HTTP_TIMEOUT)


def test_a_service_that_dies_is_started_again_and_the_others_keep_serving(shared_make_run, clean_databases):
    make_run = shared_make_run
    cpf = cpfs(1, start=77_000_000)[0]
    assert requests.post(f"{make_run.api}/person", json=person_body(cpf), timeout=HTTP_TIMEOUT).status_code == 201
    score_pid = make_run.pid_of("score")
    assert score_pid
    os.kill(score_pid, signal.SIGKILL)
    # Writes go on while score is down (they need person only), none refused.
    statuses = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        response = requests.post(
            f"{make_run.api}/person/{cpf}/debt", json={"value": str(len(statuses) + 1)}, timeout=HTTP_TIMEOUT
        )
        statuses.append(response.status_code)
        new_pid = make_run.pid_of("score")
        if new_pid and new_pid != score_pid:
            break
    assert new_pid and new_pid != score_pid, make_run.ctl("status")
    assert set(statuses) == {201}, statuses
    # ... and score catches up with them: its replica has every debt.
    wait_for(
        lambda: (
            requests.get(
                f"{make_run.api}/{cpf}/score", params={"min_sequence": len(statuses) + 1}, timeout=HTTP_TIMEOUT
            ).json()["stale"]
            is False
        ),
        30,
        "score to apply the writes made while it was down",
    )


def test_make_restart_and_make_status(shared_make_run):
    make_run = shared_make_run
    gateway_pid = make_run.pid_of("gateway:gateway-1")
    assert make_run.pid_of("edge") and make_run.pid_of("person") and gateway_pid
    out = make_run.ctl("restart", "SERVICE=gateway-1")
    assert "gateway-1: started" in out, out
    assert make_run.pid_of("gateway:gateway-1") not in (0, gateway_pid)
    wait_for(
        lambda: requests.get(f"{make_run.api}/health", timeout=HTTP_TIMEOUT).status_code == 200,
        30,
        "the API through Traefik after the restart",
    )
