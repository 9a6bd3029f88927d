"""A private RabbitMQ node, so a run can stop and start its broker at will.

The node runs as user ``rabbitmq`` from a temporary directory, on ports of
its own, with no plugins and no config file; it never touches the machine's
shared node. ``stop_app``/``start_app`` make an outage; ``stop`` removes it all.
"""

import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import unquote, urlsplit

import amqp

from harness.processes import free_port

log = logging.getLogger(__name__)


class RabbitNode:
    """One ``rabbitmq-server -detached`` node; use as a context manager or call start/stop."""

    def __init__(self, prefix: str = "harness", run_id: str | None = None):
        self.run_id = run_id or uuid.uuid4().hex[:8]
        self.name = f"{prefix}-{self.run_id}@localhost"
        self.port = free_port()
        self.dist_port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix=f"{prefix}-rabbit-"))
        self.app_running = False

    # --- lifecycle -----------------------------------------------------------------

    @property
    def pid_file(self) -> Path:
        return self.dir / "pid"

    @property
    def pid(self) -> int | None:
        """The node's Erlang VM (beam.smp) process id, once it started."""
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def ctl(self, *args, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(
            ["rabbitmqctl", "-q", "-n", self.name, *args], capture_output=True, text=True, timeout=timeout
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed ({result.returncode}): {result.stderr}")
        return result

    def start(self) -> "RabbitNode":
        if shutil.which("rabbitmq-server") is None:
            raise RuntimeError("rabbitmq-server is not installed")
        self.dir.chmod(0o755)
        if os.geteuid() == 0:
            shutil.chown(self.dir, user="rabbitmq")
        env = {
            **os.environ,
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.dir / "log"),
            "RABBITMQ_PID_FILE": str(self.pid_file),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "plugins"),
            "RABBITMQ_CONFIG_FILE": str(self.dir / "none"),
        }
        started = time.monotonic()
        # The detached node inherits stdout/stderr: a pipe there would never reach
        # EOF, so they go to a file.
        with open(self.dir / "server.out", "wb") as out:
            subprocess.run(
                ["rabbitmq-server", "-detached"], env=env, check=True, timeout=60, stdout=out, stderr=subprocess.STDOUT
            )
        self._wait_booted()
        self.app_running = True
        log.info("RabbitMQ node %s on port %s in %.1fs", self.name, self.port, time.monotonic() - started)
        return self

    def _wait_booted(self, timeout: float = 90) -> None:
        # ``rabbitmqctl wait`` fails with garbage_in_pid_file when it reads the
        # file while the node is still writing it: wait for a whole pid first.
        deadline = time.monotonic() + timeout
        while self.pid is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"RabbitMQ node {self.name} wrote no pid file in {timeout}s")
            time.sleep(0.05)
        self.ctl("wait", str(self.pid_file), "--timeout", "60", timeout=timeout)

    def stop(self) -> None:
        """Stop the node (SIGKILL if it will not) and remove its directory."""
        try:
            self.ctl("stop", str(self.pid_file), timeout=90, check=False)
        except subprocess.TimeoutExpired:
            pass
        finally:
            pid = self.pid
            if pid is not None and self.pid_file.exists():  # the stop failed: it is still ours
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            shutil.rmtree(self.dir, ignore_errors=True)
            self.app_running = False

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # --- outages -------------------------------------------------------------------

    def stop_app(self) -> None:
        """The broker goes away (connections drop); durable queues and persistent messages stay."""
        self.ctl("stop_app", timeout=120)
        self.app_running = False

    def start_app(self) -> None:
        self.ctl("start_app", timeout=120)
        self.ctl("await_startup", timeout=120, check=False)
        self.app_running = True

    # --- vhosts and queues -------------------------------------------------------------

    def amqp_uri(self, vhost: str) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/{vhost}"

    def add_vhost(self, name: str | None = None) -> str:
        """Create a vhost (guest may use it); return its AMQP URI."""
        name = name or f"v-{uuid.uuid4().hex[:10]}"
        self.ctl("add_vhost", name)
        self.ctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        return self.amqp_uri(name)

    def delete_vhost(self, name: str) -> None:
        self.ctl("delete_vhost", name, check=False)

    def queue_depths(self, vhost: str) -> dict:
        """Messages (ready + unacknowledged) per queue of ``vhost``, as ``list_queues`` says.

        Quorum queues report these statistics only every few seconds: for an exact
        count right now use :func:`message_count`.
        """
        out = self.ctl("list_queues", "-p", vhost, "name", "messages", "--no-table-headers").stdout
        depths = {}
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1].isdigit():
                depths[parts[0]] = int(parts[1])
        return depths


def amqp_connection(amqp_uri: str, confirm_publish: bool = False, connect_timeout: float = 10) -> amqp.Connection:
    """A connected py-amqp connection to ``amqp://user:password@host:port/vhost``."""
    url = urlsplit(amqp_uri)
    conn = amqp.Connection(
        host=f"{url.hostname}:{url.port or 5672}",
        userid=unquote(url.username or "guest"),
        password=unquote(url.password or "guest"),
        virtual_host=unquote(url.path[1:]) or "/",
        confirm_publish=confirm_publish,
        connect_timeout=connect_timeout,
    )
    conn.connect()
    return conn


def message_count(amqp_uri: str, queue: str) -> int:
    """Ready messages in ``queue`` now (a passive declare: exact, also for quorum queues)."""
    conn = amqp_connection(amqp_uri)
    try:
        return conn.channel().queue_declare(queue, passive=True).message_count
    finally:
        conn.close()
