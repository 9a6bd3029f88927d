"""The services as real ``nameko run`` processes, and what they cost (memory, CPU).

:class:`System` starts person, score and gateway from the repository root with
``nameko run --config config.yml <svc>.service`` and the environment that
``config.yml`` reads (broker, databases, gateway address, plus any extra), each
logging to a file of its own, and Traefik in front of the gateways when asked.
The ``/proc`` readers work on any process id.
"""

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
NAMEKO = str(Path(sys.executable).with_name("nameko"))
SERVICES = ("person", "score", "gateway")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- /proc -------------------------------------------------------------------------


def proc_status(pid: int) -> dict:
    """``/proc/<pid>/status`` as a dict of strings (``{}`` if the process is gone)."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            return {key: value.strip() for key, _, value in (line.partition(":") for line in handle)}
    except OSError:
        return {}


def _kib(value: str | None) -> int | None:
    return int(value.split()[0]) if value else None


def peak_rss_mib(pid: int) -> float | None:
    """Peak resident memory (``VmHWM``) of a process, in MiB."""
    kib = _kib(proc_status(pid).get("VmHWM"))
    return None if kib is None else kib / 1024


def cpu_seconds(pid: int, children: bool = False) -> float:
    """User + system CPU time of a process (all its threads), with ``children``
    that of its children that ended and were waited for too; 0 if it is gone.

    The children matter for PostgreSQL: its postmaster forks a backend per
    connection, and a pool that opens and closes connections (nameko-sqlalchemy's
    overflow, say) has backends end within a measure; their CPU would
    otherwise be lost, as they are not there to be read at its end."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # fields[0] is the state (field 3); utime, stime, cutime, cstime are fields 14 to 17
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLOCK_TICKS


def pids_named(comm: str) -> list:
    """Process ids whose command name (``/proc/<pid>/comm``) is ``comm``."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as handle:
                    if handle.read().strip() == comm:
                        pids.append(int(entry))
            except OSError:
                continue
    return pids


def machine_cpu() -> tuple:
    """(busy, total) CPU seconds of the whole machine since boot, from ``/proc/stat``."""
    with open("/proc/stat") as handle:
        values = [int(v) for v in handle.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])
    return (total - idle) / CLOCK_TICKS, total / CLOCK_TICKS


def stop_together(processes: dict, timeout: float = 15) -> None:
    """Empty ``processes`` (name -> Popen): SIGTERM them all at once (a service
    takes 2 to 3 s to stop gracefully), then wait; SIGKILL what is left."""
    procs = [processes.pop(name) for name in list(processes)]
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class CpuMeter:
    """CPU seconds spent by named groups of processes between :meth:`start` and :meth:`stop`.

    ``groups`` maps a name to a callable returning the current pids of that group
    (called at both ends, so processes that appear in between are counted from 0).
    """

    def __init__(self, groups: dict, with_children=("postgres",)):
        self.groups = groups
        self.with_children = with_children  # groups whose ended children count (PostgreSQL's backends)
        self._start = {}
        self.result = {}

    def _sample(self) -> dict:
        return {
            name: {pid: cpu_seconds(pid, children=name in self.with_children) for pid in pids()}
            for name, pids in self.groups.items()
        }

    def start(self) -> "CpuMeter":
        self._start = self._sample()
        self._machine = machine_cpu()
        self._wall = time.monotonic()
        return self

    def stop(self) -> dict:
        end = self._sample()
        busy, total = machine_cpu()
        self.result = {
            name: sum(max(0.0, cpu - self._start[name].get(pid, 0.0)) for pid, cpu in pids.items())
            for name, pids in end.items()
        }
        self.result["machine_busy"] = busy - self._machine[0]
        self.result["wall"] = time.monotonic() - self._wall
        return self.result


# The edge's per-client limits in tests (see System).
EDGE_TEST_LIMITS = {"EDGE_RATE_LIMIT": "100000", "EDGE_RATE_BURST": "100000", "EDGE_CLIENT_IN_FLIGHT": "10000"}

# The key the tests' services hash CPFs with (contracts/erasure.py), so a test
# can find the records an erasure leaves.
TEST_HASH_KEY = "test-personal-data-key"


# --- the services ----------------------------------------------------------------------


class System:
    """person, score and gateway as ``nameko run`` processes against one broker and two databases.

    ``db_uris`` is ``{"person:PersonBase": ..., "score:ScoreBase": ...}``, as in
    ``config.yml``. ``extra_env`` overrides or adds variables for every process;
    :meth:`start` takes more for one process. A process is named
    ``<service>.<instance>`` (``person.1``) and logs to ``<log_dir>/<name>.log``;
    every gateway instance gets a port of its own (``gateways``: name -> URL).
    The one launcher of the tests and the benchmark; ``root`` runs another
    checkout's code (the benchmark's A/B of two revisions).
    """

    def __init__(
        self,
        amqp_uri: str,
        db_uris: dict,
        log_dir,
        config: str = "config.yml",
        root: Path = ROOT,
        edge: bool = False,
        gateways: int = 1,
        **extra_env,
    ):
        self.port = free_port()
        self.gateways = {"gateway.1": f"http://127.0.0.1:{self.port}"}
        self.gateway_count = gateways
        # With ``edge``, Traefik in front of the gateways (gateway/edge.py), as
        # make run has it: ``url`` is Traefik's, ``gateways`` each gateway's own.
        # (Without, start_edge may still put it there later: the benchmark's hop.)
        self.edge = edge
        self.edge_url, self.edge_ops = f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"
        self.url = self.edge_url if edge else self.gateways["gateway.1"]
        edge_env = {
            "EDGE_ADDRESS": self.edge_url.removeprefix("http://"),
            "EDGE_OPS_ADDRESS": self.edge_ops.removeprefix("http://"),
            # A test client is one address sending far more than any real
            # client may: only the edge's own tests keep the real limits.
            **EDGE_TEST_LIMITS,
        }
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.root = Path(root)  # the checkout whose code runs (another revision's, for an A/B)
        self.config = str(self.root / config)
        self.env = {
            **os.environ,
            "AMQP_URI": amqp_uri,
            "PERSON_DB_URI": db_uris["person:PersonBase"],
            "SCORE_DB_URI": db_uris["score:ScoreBase"],
            "WEB_SERVER_ADDRESS": f"127.0.0.1:{self.port}",
            # Any free port: two runs, or two instances of a service, never collide.
            "PERSON_METRICS_ADDRESS": "127.0.0.1:0",
            "SCORE_METRICS_ADDRESS": "127.0.0.1:0",
            "PYTHONWARNINGS": "ignore",
            "PERSONAL_DATA_HASH_KEY": TEST_HASH_KEY,
            **edge_env,
            **{key: str(value) for key, value in extra_env.items()},
        }
        self.processes = {}

    def start(self, service: str, instance: int = 1, module: str | None = None, **env) -> subprocess.Popen:
        """Start ``<service>.<instance>`` (``module``: a stand-in service module
        to run instead of ``<service>.service``, found from the repository root)."""
        name = f"{service}.{instance}"
        if name in self.processes and self.processes[name].poll() is None:
            raise RuntimeError(f"{name} is already running")
        process_env = {**self.env, **{key: str(value) for key, value in env.items()}}
        if service == "gateway" and name != "gateway.1":  # a port of its own, kept across restarts
            self.gateways.setdefault(name, f"http://127.0.0.1:{free_port()}")
            process_env["WEB_SERVER_ADDRESS"] = self.gateways[name].removeprefix("http://")
        with open(self.log_dir / f"{name}.log", "ab") as out:
            self.processes[name] = subprocess.Popen(
                [NAMEKO, "run", "--config", self.config, module or f"{service}.service"],
                cwd=self.root,
                env=process_env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        return self.processes[name]

    def start_all(self, timeout: float = 60) -> "System":
        for service in SERVICES:
            for instance in range(1, (self.gateway_count if service == "gateway" else 1) + 1):
                self.start(service, instance)
        if self.edge:
            self.start_edge()
        self.wait_healthy(timeout)
        if self.edge:
            self.wait_edge_sees(len(self.gateways), timeout)
        return self

    def start_edge(self) -> subprocess.Popen:
        """Traefik (``edge.1``) in front of every gateway started so far, as ``python -m gateway.edge run``."""
        urls = ",".join(self.gateways[name] for name in sorted(self.gateways))
        command = [sys.executable, "-m", "gateway.edge", "run", "--dir", str(self.log_dir / "edge"), "--gateways", urls]
        with open(self.log_dir / "edge.1.log", "ab") as out:
            self.processes["edge.1"] = subprocess.Popen(
                command, cwd=self.root, env=self.env, stdout=out, stderr=subprocess.STDOUT
            )
        return self.processes["edge.1"]

    def edge_servers_up(self) -> dict:
        """``{gateway URL: whether Traefik has it in rotation}``, from Traefik's metrics."""
        text = requests.get(f"{self.edge_ops}/metrics", timeout=5).text
        found = re.findall(
            r'^traefik_service_server_up\{service="gateway-pool@file",url="([^"]+)"\} (\S+)$', text, re.M
        )
        return {url: value == "1" for url, value in found}

    def wait_edge_sees(self, count: int, timeout: float = 30) -> float:
        """Until Traefik has ``count`` gateways in rotation; the seconds waited."""
        started = time.monotonic()
        while time.monotonic() < started + timeout:
            self.assert_running()
            try:
                if sum(self.edge_servers_up().values()) == count:
                    return time.monotonic() - started
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"Traefik did not see {count} gateways up in {timeout}s\n{self.logs()}")

    def pid(self, name: str) -> int:
        return self.processes[name].pid

    def running(self, name: str) -> bool:
        proc = self.processes.get(name)
        return proc is not None and proc.poll() is None

    def assert_running(self) -> None:
        for name, proc in self.processes.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.tail(name)}")

    def health(self, url: str | None = None, timeout: float = 10) -> requests.Response:
        return requests.get(f"{url or self.url}/health", timeout=timeout)

    def wait_healthy(self, timeout: float = 60, url: str | None = None, ready=None) -> float:
        """Until ``/health`` of the gateway at ``url`` is 200 (or ``ready(response)``
        holds), failing at once if a process died; returns the seconds waited."""
        ready = ready or (lambda response: response.status_code == 200)
        started = time.monotonic()
        last = None
        while time.monotonic() < started + timeout:
            self.assert_running()
            try:
                response = self.health(url)
                if ready(response):
                    return time.monotonic() - started
                last = f"{response.status_code} {response.text[:500]}"
            except requests.RequestException as exc:
                last = repr(exc)
            time.sleep(0.1)
        raise RuntimeError(f"services not healthy after {timeout}s (last /health: {last})\n{self.logs()}")

    def stop(self, name: str, sig=signal.SIGTERM, timeout: float = 15) -> None:
        proc = self.processes.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def stop_all(self, timeout: float = 15) -> None:
        stop_together(self.processes, timeout)

    def peak_rss_mib(self) -> dict:
        """``VmHWM`` of every running service process, in MiB."""
        return {name: peak_rss_mib(proc.pid) for name, proc in self.processes.items() if proc.poll() is None}

    def log(self, name: str) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def log_of(self, service: str) -> str:
        """Every instance's log of ``service``, concatenated."""
        return "\n".join(self.log(p.stem) for p in sorted(self.log_dir.glob(f"{service}.*.log")))

    def tail(self, name: str, lines: int = 40) -> str:
        return "\n".join(self.log(name).splitlines()[-lines:])

    def logs(self, lines: int = 60) -> str:
        """The tail of every process's log, for a failure message."""
        names = sorted({p.stem for p in self.log_dir.glob("*.log")})
        return "\n".join(f"----- {name} -----\n{self.tail(name, lines)}" for name in names)


@contextlib.contextmanager
def started(amqp_uri, db_uris, log_dir, system_cls=System, **extra_env):
    """A whole system (``system_cls``) started with ``extra_env``, stopped on exit."""
    running = system_cls(amqp_uri, db_uris, log_dir, **extra_env)
    try:
        yield running.start_all()
    finally:
        running.stop_all()
