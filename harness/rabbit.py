"""A private RabbitMQ node, so a run can stop and start its broker at will.

The node runs as user ``rabbitmq`` from a temporary directory, on ports of
its own, with no plugins (but the management API if asked) and a config file
only if given; it never touches the machine's shared node.
``stop_app``/``start_app`` make an outage; ``stop`` removes it all.
"""

import json
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

from harness.processes import ROOT, free_port

log = logging.getLogger(__name__)


def _descendants(pid: int) -> list:
    """Every process descended from ``pid``, from ``/proc`` (children first found, then theirs)."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            # /proc/<pid>/stat: "pid (comm) state ppid ..."; comm may hold spaces and parentheses.
            ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


class RabbitNode:
    """One ``rabbitmq-server -detached`` node; use as a context manager or call start/stop."""

    def __init__(self, prefix: str = "harness", run_id: str | None = None, config: str = "", management=False):
        self.run_id = run_id or uuid.uuid4().hex[:8]
        self.name = f"{prefix}-{self.run_id}@localhost"
        self.port = free_port()
        self.dist_port = free_port()
        # The management plugin (its HTTP API on api_url), only where a test needs it: it slows the boot.
        self.management_port = free_port() if management else None
        if management:
            config += f"\nmanagement.tcp.ip = 127.0.0.1\nmanagement.tcp.port = {self.management_port}\n"
        self.config = config  # rabbitmq.conf lines of its own (none by default)
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
        command = ["rabbitmqctl", "-q", "-n", self.name, *args]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out, err = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            # rabbitmqctl is a script that runs an Erlang VM through `su`, in a
            # session of its own: killing the script alone (what subprocess.run
            # does) would leave the VM running, holding the pipes open.
            for pid in [*_descendants(process.pid), process.pid]:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            process.communicate()
            raise
        result = subprocess.CompletedProcess(command, process.returncode, out, err)
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
            "RABBITMQ_CONFIG_FILE": str(self.dir / ("rabbitmq.conf" if self.config else "none")),
        }
        if self.config:
            (self.dir / "rabbitmq.conf").write_text(self.config)
        if self.management_port:
            (self.dir / "plugins").write_text("[rabbitmq_management].\n")
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

    @property
    def api_url(self) -> str:
        """The management HTTP API (a node started with ``management=True``)."""
        return f"http://127.0.0.1:{self.management_port}"

    def add_vhost(self, name: str | None = None) -> str:
        """Create a vhost (guest may use it); return its AMQP URI."""
        name = name or f"v-{uuid.uuid4().hex[:10]}"
        self.ctl("add_vhost", name)
        self.ctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        return self.amqp_uri(name)

    def delete_vhost(self, name: str) -> None:
        self.ctl("delete_vhost", name, check=False)

    def queue_names(self, vhost: str) -> set:
        return set(self.queue_depths(vhost))

    def bound_queues(self, vhost: str) -> set:
        """Names of the queues some binding of ``vhost`` routes to."""
        out = self.ctl(
            "list_bindings", "-p", vhost, "destination_name", "destination_kind", "--no-table-headers"
        ).stdout
        return {parts[0] for parts in (line.split() for line in out.splitlines()) if parts[1:] == ["queue"]}

    def consumers_ack_required(self, vhost: str) -> dict:
        """``{queue name: [whether the broker waits for an ack, per consumer]}`` of ``vhost``."""
        out = self.ctl("list_consumers", "-p", vhost, "queue_name", "ack_required", "--no-table-headers").stdout
        consumers = {}
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 2:
                consumers.setdefault(parts[0], []).append(parts[1] == "true")
        return consumers

    def close_connections(self, vhost: str) -> None:
        """Close every client connection of ``vhost`` (the clients see the broker drop them)."""
        self.ctl("close_all_connections", "--vhost", vhost, "closed by a test")

    def forget_queue(self, vhost: str, name: str) -> None:
        """Delete a queue's record and bindings, not its process or consumers: what
        a surviving cluster node's cleanup of a lost node does to a transient
        queue of that name (``rabbit_amqqueue:on_node_down``), even to one
        declared again since (rabbitmq-server#6271)."""
        resource = f'rabbit_misc:r(<<"{vhost}">>, queue, <<"{name}">>)'
        self.ctl("eval", f'rabbit_amqqueue:internal_delete({resource}, <<"harness">>).')

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
    """A connected py-amqp connection to ``amqp://user:password@host:port/vhost``;
    to the first node that answers of a cluster's ``uri;uri;...``."""
    *others, last = amqp_uri.split(";")
    for uri in others:
        try:
            return _connect(uri, confirm_publish, min(connect_timeout, 2))
        except (OSError, amqp.exceptions.AMQPError):
            continue
    return _connect(last, confirm_publish, connect_timeout)


def _connect(amqp_uri: str, confirm_publish: bool, connect_timeout: float) -> amqp.Connection:
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


def cluster_uri(node_uris: list) -> str:
    """``amqp://...node1;amqp://...node2;...``, as compose's ``AMQP_URI`` for a
    cluster: kombu fails over through it in order."""
    return ";".join(node_uris)


COMPOSE_CLUSTER_CONF = ROOT / "docker" / "rabbitmq-cluster.conf"


def node_settings(conf: Path = COMPOSE_CLUSTER_CONF) -> str:
    """The compose cluster's node settings (``docker/rabbitmq-cluster.conf``),
    less its peer discovery, which names the containers' hosts: the nodes here
    join with ``rabbitmqctl join_cluster`` instead. One file, so the cluster
    the tests break is configured as the one compose runs."""
    lines = [
        line
        for line in conf.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#") and not line.startswith("cluster_formation.")
    ]
    return "\n".join(lines) + "\n"


class RabbitCluster:
    """Three (``size``) private nodes joined in one cluster, on ports of their own.

    Each node is a :class:`RabbitNode` (own directories, ports and config
    file); the second and third join the first with ``rabbitmqctl
    join_cluster``. The machine's shared node is never addressed: every
    ``rabbitmqctl`` call names a node of this cluster. A vhost is cluster-wide,
    and :meth:`amqp_uri` lists every node, so a client fails over to a survivor.
    """

    def __init__(self, size: int = 3, prefix: str = "cluster", run_id: str | None = None):
        run_id = run_id or uuid.uuid4().hex[:8]
        config = node_settings()
        self.nodes = [
            RabbitNode(prefix=f"{prefix}{index}", run_id=run_id, config=config) for index in range(1, size + 1)
        ]

    def start(self) -> "RabbitCluster":
        try:
            for node in self.nodes:
                node.start()
            first = self.nodes[0]
            for node in self.nodes[1:]:
                node.ctl("stop_app", timeout=120)
                node.ctl("reset", timeout=120)
                node.ctl("join_cluster", first.name, timeout=120)
                node.ctl("start_app", timeout=120)
            self.wait_running(len(self.nodes))
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for node in self.nodes:
            self.resume(node)  # a paused node would not stop
            node.stop()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def running_nodes(self) -> list:
        """Names of the nodes the cluster sees running, asked of any live node."""
        for node in self.nodes:
            if not node.app_running:
                continue
            try:
                out = node.ctl("cluster_status", "--formatter", "json", timeout=15, check=False).stdout
                names = json.loads(out).get("running_nodes", [])
            except (subprocess.TimeoutExpired, ValueError):
                continue
            if names:
                return names
        return []

    def wait_running(self, count: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while len(self.running_nodes()) != count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the cluster did not reach {count} running nodes: {self.running_nodes()}")
            time.sleep(0.5)

    # --- faults --------------------------------------------------------------------

    def kill(self, node: RabbitNode) -> None:
        """SIGKILL the node's VM: no goodbye to its peers or its clients."""
        os.kill(node.pid, signal.SIGKILL)
        node.pid_file.unlink(missing_ok=True)
        node.app_running = False

    def restart(self, node: RabbitNode) -> None:
        """Start a node that was killed or stopped; it rejoins the cluster from its own data."""
        node.pid_file.unlink(missing_ok=True)
        node.start()

    def pause(self, node: RabbitNode) -> None:
        """SIGSTOP: the node holds its sockets open and answers nothing."""
        os.kill(node.pid, signal.SIGSTOP)
        node.app_running = False  # no rabbitmqctl call may wait on it

    def resume(self, node: RabbitNode) -> None:
        if node.pid is not None:
            try:
                os.kill(node.pid, signal.SIGCONT)
                node.app_running = True
            except ProcessLookupError:
                pass

    def stop_node(self, node: RabbitNode) -> None:
        """A clean stop of one node (a rolling restart's step); its data stays."""
        node.ctl("stop", str(node.pid_file), timeout=120)
        node.app_running = False

    # --- clients -------------------------------------------------------------------

    def add_vhost(self, name: str | None = None) -> str:
        """A vhost on the cluster (guest may use it); the AMQP URI listing every node."""
        name = name or f"v-{uuid.uuid4().hex[:10]}"
        self.nodes[0].add_vhost(name)
        return self.amqp_uri(name)

    def amqp_uri(self, vhost: str, first: int = 0) -> str:
        """Every node's URI, starting at node ``first`` (a client connects to the first that answers)."""
        order = self.nodes[first:] + self.nodes[:first]
        return cluster_uri([node.amqp_uri(vhost) for node in order])

    def node_named(self, name: str) -> RabbitNode:
        return next(node for node in self.nodes if node.name == name)

    def queues(self, vhost: str) -> str:
        """Every queue of ``vhost`` with its type, consumers, messages and node, as a
        running node lists them: what a timed-out scenario prints to explain itself."""
        for node in self.nodes:
            if not node.app_running:
                continue
            result = node.ctl(
                "list_queues",
                "-p",
                vhost,
                "name",
                "type",
                "consumers",
                "messages",
                "pid",
                "leader",
                "--no-table-headers",
                timeout=15,
                check=False,
            )
            if result.returncode == 0:
                return f"queues of {vhost} (asked of {node.name}):\n{result.stdout}"
        return f"queues of {vhost}: no running node answered"

    def queue_leader(self, vhost: str, queue: str) -> RabbitNode:
        """The node holding a quorum queue's leader."""
        for node in self.nodes:
            if not node.app_running:
                continue
            out = node.ctl("list_queues", "-p", vhost, "name", "leader", "--no-table-headers", check=False).stdout
            for line in out.splitlines():
                parts = line.split()
                if len(parts) == 2 and parts[0] == queue:
                    return self.node_named(parts[1])
        raise RuntimeError(f"no leader found for {queue}")
