"""A TCP proxy in front of the broker, so a test can stall or cut one service's
connections at the worst moment without touching the broker or the others.

A service whose ``AMQP_URI`` points at the proxy talks to the broker through it.
Then:

- :meth:`TcpProxy.hold` stops forwarding what the service sends (its acks,
  publishes, replies) on the connections open now; what the broker sends still
  arrives. The service keeps working and believes its acks and replies are on
  their way, which is what the broker sees when a process dies or a network
  drops after the work was done and before its acknowledgement got through.
- :meth:`TcpProxy.cut` closes those connections: whatever was held is lost, the
  broker requeues the unacked deliveries, and the service reconnects (through
  the proxy, on connections that are not held).

It runs on threads (green ones in a monkey-patched test process).
"""

import logging
import socket
import threading

log = logging.getLogger(__name__)

CHUNK = 65536
TAIL = 256  # the client's last bytes each link keeps, for passes()


class _Link:
    """One client connection and its connection to the target."""

    def __init__(self, client: socket.socket, server: socket.socket):
        self.client = client
        self.server = server
        self.flowing = threading.Event()  # client -> server forwarding allowed
        self.flowing.set()
        self.closed = False
        self.sent = b""  # the last TAIL bytes forwarded client -> server
        self._pumps = 2
        self._lock = threading.Lock()

    def close(self):
        """Shut both sockets down; the pumps wake, end, and the last one closes them.
        (Closing a socket another green thread is reading would leave that
        reader registered on a file descriptor the next socket may reuse.)"""
        self.closed = True
        self.flowing.set()  # wake a held pump so it sees the close
        for sock in (self.client, self.server):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def pump_ended(self):
        with self._lock:
            self._pumps -= 1
            last = self._pumps == 0
        if last:
            self.client.close()
            self.server.close()


class TcpProxy:
    """Forwards ``127.0.0.1:<port>`` to ``target_host:target_port``."""

    def __init__(self, target_host: str, target_port: int):
        self.target = (target_host, target_port)
        self._links: list[_Link] = []
        self._lock = threading.Lock()
        self._listener = None
        self.port = None

    def start(self) -> "TcpProxy":
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def uri(self, amqp_uri: str) -> str:
        """``amqp_uri`` (which points at the target) pointed at this proxy instead."""
        return amqp_uri.replace(f"{self.target[0]}:{self.target[1]}", f"127.0.0.1:{self.port}", 1)

    @property
    def connections(self) -> int:
        with self._lock:
            return sum(1 for link in self._links if not link.closed)

    def hold(self) -> int:
        """Stop forwarding client -> server bytes on every open connection (they
        stay unread in the socket); returns how many connections are held."""
        with self._lock:
            links = [link for link in self._links if not link.closed]
        for link in links:
            link.flowing.clear()
        log.info("proxy :%s holding %d connections", self.port, len(links))
        return len(links)

    def release(self) -> None:
        """Forward again what was held, on the connections still open."""
        with self._lock:
            for link in self._links:
                link.flowing.set()

    def cut(self) -> int:
        """Close every open connection, both sides (held bytes are lost); returns how many."""
        with self._lock:
            links, self._links = [link for link in self._links if not link.closed], []
        for link in links:
            link.close()
        log.info("proxy :%s cut %d connections", self.port, len(links))
        return len(links)

    def stop(self) -> None:
        self.cut()
        listener, self._listener = self._listener, None
        if listener is not None:
            try:
                listener.shutdown(socket.SHUT_RDWR)  # wakes the accept loop, which closes it
            except OSError:
                listener.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def _accept(self):
        listener = self._listener
        try:
            while True:
                client, _ = listener.accept()
                try:
                    server = socket.create_connection(self.target, timeout=5)
                    server.settimeout(None)
                except OSError as exc:
                    log.warning("proxy :%s could not reach %s: %r", self.port, self.target, exc)
                    client.close()
                    continue
                link = _Link(client, server)
                with self._lock:
                    self._links.append(link)
                threading.Thread(target=self._pump, args=(link, client, server, True), daemon=True).start()
                threading.Thread(target=self._pump, args=(link, server, client, False), daemon=True).start()
        except OSError:
            pass  # stopped
        finally:
            listener.close()

    def passes(self, link: _Link, data: bytes) -> bool:
        """Whether a chunk the client sent may go on to the server; False closes
        the connection instead. A subclass may look at the bytes (``link.sent``:
        the last ones before ``data``, for a name split across two reads)."""
        return True

    def _pump(self, link: _Link, source: socket.socket, sink: socket.socket, upstream: bool):
        try:
            while not link.closed:
                data = source.recv(CHUNK)
                if not data:
                    break
                if upstream:
                    # Held: this chunk waits here and nothing more is read, so
                    # what the service sends next waits in the socket; a cut
                    # loses all of it.
                    link.flowing.wait()
                    if not self.passes(link, data):
                        break
                    link.sent = (link.sent + data)[-TAIL:]
                if link.closed:
                    break
                sink.sendall(data)
        except OSError:
            pass
        link.close()
        link.pump_ended()


class Partition(TcpProxy):
    """A proxy that can cut its service off the broker while ``partitioned``:
    every connection is closed before its next bytes reach the broker (the
    open ones at their next send, each new one at its first), and ``refused``
    counts them. :meth:`cut` then closes the quiet ones at once."""

    def __init__(self, target_host, target_port):
        super().__init__(target_host, target_port)
        self.partitioned = False
        self.refused = 0

    def cut_off(self, link, data) -> bool:
        """Whether, while partitioned, this chunk closes its connection (a
        subclass may spare some: :class:`RelayPartition`)."""
        return True

    def passes(self, link, data):
        if self.partitioned and self.cut_off(link, data):
            self.refused += 1
            return False
        return True


class RelayPartition(Partition):
    """Cuts off a person process's outbox relay, and nothing else: while
    ``partitioned``, a connection whose bytes to the broker name the
    ``person.events`` exchange is closed (the relay's open connection at its
    next publish; each new one at its exchange declare). RPC requests and
    replies never name it."""

    EVENTS_EXCHANGE = b"person.events"

    def cut_off(self, link, data):
        return self.EVENTS_EXCHANGE in link.sent[-(len(self.EVENTS_EXCHANGE) - 1) :] + data
