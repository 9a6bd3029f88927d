"""``make run``: the whole system on this machine, under supervisord.

    python -m ops.run                  start it all; Ctrl-C (or SIGINT/SIGTERM to make) stops it all
    python -m ops.run status           each process's state
    python -m ops.run restart score    restart one: person, score, gateway (all of them), gateway-1, edge

The processes: person, score, ``EDGE.GATEWAYS`` gateways on loopback ports
from ``WEB_SERVER_ADDRESS``'s up, and Traefik (``edge``) in front of them on
``EDGE.ADDRESS``, the public entry. supervisord starts them in that order,
restarts one that exits (at once; one that dies again within 3 s, after 1, 2,
3 ... s), and stops them in the reverse order. Each logs to
``.run/logs/<name>.log``, shown here too, each line after its name.

This process runs supervisord and watches over it: it prints the ready line
once ``/health`` through Traefik is 200, and stops everything when make is
stopped. A signal sent to make alone is not passed on by it (SIGINT) or is
passed on to this process only (SIGTERM): this process sees the first as
make dropping its SIGINT handler, and stops supervisord, which stops the rest.
"""

import argparse
import getpass
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

from ops.config import load_config

ROOT = Path(__file__).resolve().parent.parent
# supervisord's configuration, socket and logs (the tests run make run elsewhere).
RUN_DIR = Path(os.environ.get("RUN_DIR") or ROOT / ".run").resolve()
CONF = RUN_DIR / "supervisord.conf"
LOGS = RUN_DIR / "logs"
PYTHON = sys.executable
SERVICES = ("person", "score")


def gateway_addresses(config: dict) -> list[str]:
    """``host:port`` of each gateway: ``EDGE.GATEWAYS`` ports up from ``WEB_SERVER_ADDRESS``'s."""
    host, _, port = config["WEB_SERVER_ADDRESS"].rpartition(":")
    return [f"{host}:{int(port) + i}" for i in range(int(config["EDGE"]["GATEWAYS"]))]


def _program(name: str, command: str, priority: int, **environment) -> str:
    env = ",".join(f'{key}="{value}"' for key, value in environment.items())
    return f"""
[program:{name}]
command={command}
priority={priority}
autorestart=true
startsecs=3
startretries=100
stopsignal=TERM
stopwaitsecs=20
redirect_stderr=true
stdout_logfile={LOGS}/{name}.log
stdout_logfile_maxbytes=20MB
stdout_logfile_backups=2
{"environment=" + env if env else ""}
"""


def supervisord_conf(config: dict) -> str:
    """The whole supervisord configuration: one declaration of what ``make run`` runs."""
    launch = f"{PYTHON} -m ops.launch run --config config.yml"
    gateways = gateway_addresses(config)
    names = [f"gateway-{i + 1}" for i in range(len(gateways))]
    urls = ",".join(f"http://{address}" for address in gateways)
    programs = [_program(service, f"{launch} {service}.service", 100) for service in SERVICES]
    programs += [
        _program(name, f"{launch} gateway.service", 200, WEB_SERVER_ADDRESS=address)
        for name, address in zip(names, gateways, strict=True)
    ]
    programs.append(_program("edge", f"{PYTHON} -m gateway.edge run --dir {RUN_DIR}/edge --gateways {urls}", 300))
    # The control socket is the current user's alone, with a password of this
    # run's (supervisorctl reads it from this file, which only they can read).
    password = secrets.token_hex(16)
    return f"""; Written by `python -m ops.run` (make run) at each start: edit ops/run.py.
[supervisord]
nodaemon=true
directory={ROOT}
logfile={RUN_DIR}/supervisord.log
pidfile={RUN_DIR}/supervisord.pid
childlogdir={LOGS}
user={getpass.getuser()}

[unix_http_server]
file={RUN_DIR}/supervisor.sock
chmod=0700
username=make-run
password={password}

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{RUN_DIR}/supervisor.sock
username=make-run
password={password}

[group:gateway]
programs={",".join(names)}
priority=200
{"".join(programs)}"""


# --- the ready line ----------------------------------------------------------------


def _healthy_gateways(ops_url: str) -> tuple[int, int]:
    """(up, all) gateways in Traefik's own view (its metrics)."""
    text = requests.get(f"{ops_url}/metrics", timeout=2).text
    states = [
        line.rsplit(" ", 1)[1]
        for line in text.splitlines()
        if line.startswith("traefik_service_server_up{") and 'service="gateway-pool@file"' in line
    ]
    return sum(state == "1" for state in states), len(states)


def _all_running() -> bool:
    """Whether supervisord has every program RUNNING."""
    out = subprocess.run(
        [Path(PYTHON).with_name("supervisorctl"), "-c", str(CONF), "status"], capture_output=True, text=True
    ).stdout
    states = [line.split()[1] for line in out.splitlines() if len(line.split()) > 1]
    return bool(states) and all(state == "RUNNING" for state in states)


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _local(address: str) -> str:
    host, _, port = address.rpartition(":")
    return f"{'localhost' if host in ('', '0.0.0.0') else host}:{port}"


def announce_when_ready(config: dict, stopping: threading.Event, timeout: float = 90) -> None:
    """Print where everything is once ``/health`` through Traefik is 200, or what still fails."""
    api = f"http://{_local(config['EDGE']['ADDRESS'])}"
    ops_url = f"http://{config['EDGE']['OPS_ADDRESS']}"
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline and not stopping.is_set():
        try:
            response = requests.get(f"{api}/health", timeout=5)
            if response.status_code == 200:
                # and Traefik has checked every gateway once (a few seconds at most)
                wanted = int(config["EDGE"]["GATEWAYS"])
                up, total = _healthy_gateways(ops_url)
                while (up, total) != (wanted, wanted) and time.monotonic() < deadline and not stopping.wait(0.3):
                    up, total = _healthy_gateways(ops_url)
                # and supervisord counts each program as started (up for
                # startsecs), so make status right after says RUNNING, with pids.
                while not _all_running() and time.monotonic() < deadline and not stopping.wait(0.3):
                    pass
                print(
                    f"\nReady: the API is on {api} (Traefik, {up} of {total} gateways healthy)\n"
                    f"  Traefik: {ops_url}/ping, metrics {ops_url}/metrics\n"
                    f"  logs in {_shown(LOGS)}/; make status; make restart SERVICE=score; Ctrl-C stops it all\n"
                    "try:  curl -i -H 'Content-Type: application/json' "
                    f"{api}/person --data @payloads/new_person.json\n",
                    flush=True,
                )
                return
            last = "; ".join(response.json().get("problems", [])) or f"status {response.status_code}"
        except (requests.RequestException, ValueError) as exc:
            last = type(exc).__name__
        stopping.wait(0.3)
    if not stopping.is_set():
        print(f"\nNot ready after {timeout:g} s: {last}. The lines above say why.", flush=True)


# --- logs ------------------------------------------------------------------------


def follow_logs(stopping: threading.Event) -> None:
    """Every ``.run/logs/<name>.log``'s new lines, each after its name."""
    offsets = {}
    while not stopping.is_set():
        for path in sorted(LOGS.glob("*.log")):
            name = path.stem
            if name.endswith("-supervisor"):  # supervisord's own per-program files
                continue
            try:
                size = path.stat().st_size
                offset = offsets.get(path, 0)
                if size < offset:  # rotated
                    offset = 0
                if size == offset:
                    continue
                with path.open("rb") as handle:
                    handle.seek(offset)
                    data = handle.read()
            except OSError:
                continue
            complete = data.rfind(b"\n") + 1
            offsets[path] = offset + complete
            for line in data[:complete].decode(errors="replace").splitlines():
                sys.stdout.write(f"{name:<10}| {line}\n")
        sys.stdout.flush()
        stopping.wait(0.2)


# --- run -------------------------------------------------------------------------


def _catches_sigint(pid: int) -> bool:
    """Whether ``pid`` has a handler for SIGINT (``/proc/<pid>/status`` SigCgt)."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) & (1 << (signal.SIGINT - 1)))
    except OSError:
        pass
    return False


def run() -> int:
    config = load_config()
    LOGS.mkdir(parents=True, exist_ok=True)
    for old in LOGS.glob("*.log*"):  # each run's logs are its own
        old.unlink()
    CONF.touch(mode=0o600)
    CONF.write_text(supervisord_conf(config), encoding="utf-8")
    # Its own session: a Ctrl-C reaches make and this process, and
    # supervisord stops the services in order instead of each dying at once.
    supervisord = subprocess.Popen(
        [Path(PYTHON).with_name("supervisord"), "-c", str(CONF)], cwd=ROOT, start_new_session=True
    )
    stopping = threading.Event()

    def stop(*_):
        if not stopping.is_set():
            stopping.set()
            print("\nStopping everything ...", flush=True)
            supervisord.send_signal(signal.SIGTERM)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop)
    threading.Thread(target=follow_logs, args=(stopping,), daemon=True).start()
    threading.Thread(target=announce_when_ready, args=(config, stopping), daemon=True).start()

    # make, when it runs this: SIGINT sent to make alone makes it drop its
    # SIGINT handler (and wait for this process); its death reparents this one.
    parent = os.getppid()
    parent_catches_sigint = _catches_sigint(parent)
    while supervisord.poll() is None:
        if os.getppid() != parent or (parent_catches_sigint and not _catches_sigint(parent)):
            stop()
        try:
            supervisord.wait(0.2)
        except subprocess.TimeoutExpired:
            pass
    stopping.set()
    time.sleep(0.3)  # the last lines of the logs
    print("Stopped.", flush=True)
    # 0 when stopped on request: make then ends without "Interrupt" or "Error".
    return 0 if supervisord.returncode in (0, -signal.SIGTERM) else supervisord.returncode


def supervisorctl(*args: str) -> int:
    if not (RUN_DIR / "supervisor.sock").exists():
        print("Not running: make run starts it.", file=sys.stderr)
        return 1
    return subprocess.call([Path(PYTHON).with_name("supervisorctl"), "-c", str(CONF), *args])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("status", help="each process's state")
    restart = commands.add_parser("restart", help="restart one service")
    restart.add_argument("service", help="person, score, gateway (every one), gateway-<n> or edge")
    args = parser.parse_args(argv)
    if args.command is None:
        return run()
    if args.command == "status":
        return supervisorctl("status")
    name = args.service
    target = "gateway:*" if name == "gateway" else f"gateway:{name}" if name.startswith("gateway-") else name
    return supervisorctl("restart", target)


if __name__ == "__main__":
    sys.exit(main())
