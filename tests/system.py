"""The three services as real ``nameko run`` processes, for end-to-end tests."""

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import requests

from harness.processes import NAMEKO, ROOT, free_port, stop_together  # noqa: F401  (re-exported to the suites)


class System:
    """Starts person, score and gateway against the given broker and databases."""

    def __init__(self, amqp_uri, db_uris, log_dir, **extra_env):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_dir = Path(log_dir)
        self.env = {
            **os.environ,
            "AMQP_URI": amqp_uri,
            "PERSON_DB_URI": db_uris["person:PersonBase"],
            "SCORE_DB_URI": db_uris["score:ScoreBase"],
            "WEB_SERVER_ADDRESS": f"127.0.0.1:{self.port}",
            # Any free port: two runs, or two instances of a service, never collide.
            "PERSON_METRICS_ADDRESS": "127.0.0.1:0",
            "SCORE_METRICS_ADDRESS": "127.0.0.1:0",
            "OUTBOX_SWEEP_INTERVAL": "0.2",
            "OUTBOX_SWEEP_GRACE": "0.5",
            "PYTHONWARNINGS": "ignore",
            **{key: str(value) for key, value in extra_env.items()},
        }
        self.processes = {}

    def start(self, service, instance=1):
        name = f"{service}.{instance}"
        log = open(self.log_dir / f"{name}.log", "ab")
        self.processes[name] = subprocess.Popen(
            [NAMEKO, "run", "--config", "config.yml", f"{service}.service"],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        return self.processes[name]

    def start_all(self, timeout=30):
        for service in ("person", "score", "gateway"):
            self.start(service)
        self.wait_healthy(timeout)
        return self

    def wait_healthy(self, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self.processes.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.log(name)}")
            try:
                if requests.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise RuntimeError("services not healthy in time:\n" + "\n".join(map(self.log, self.processes)))

    def stop(self, name, sig=signal.SIGTERM, timeout=15):
        proc = self.processes.pop(name)
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def stop_all(self, timeout=15):
        stop_together(self.processes, timeout)

    def log(self, name):
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""


@contextlib.contextmanager
def started(amqp_uri, db_uris, log_dir, system_cls=System, **extra_env):
    """A whole system (``system_cls``) started with ``extra_env``, stopped on exit."""
    running = system_cls(amqp_uri, db_uris, log_dir, **extra_env)
    try:
        yield running.start_all()
    finally:
        running.stop_all()
