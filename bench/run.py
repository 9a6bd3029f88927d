"""``python -m bench [--quick] [--json PATH] [--profile]``: the whole benchmark, one table."""

import argparse
import logging
import os
import platform
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from bench import chart, compare, profile, report, scenarios, soak, wrk
from bench.system import BenchSystem
from harness.cpf import cpfs

log = logging.getLogger("bench")
DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "latest.json"


@dataclass
class Params:
    reps: int = 3  # repetitions of every cheap measure
    amqp_each_msgs: int = 2000
    amqp_batched_msgs: int = 10000
    amqp_batch: int = 500  # the relay's OUTBOX_BATCH_SIZE
    amqp_prefetch: int = 100
    pg_seconds: float = 2.0
    people: int = 200
    concurrencies: tuple = (1, 8, 32)
    warmup_seconds: int = 2
    write_seconds: int = 8
    lag_reps: int = 3
    lag_seconds: int = 10
    lag_connections: int = 8
    e2e_reps: int = 3
    e2e_seconds: int = 30
    outbox_rows: int = 20000
    outage_reps: int = 3
    profile_seconds: int = 20
    ryw_reads: int = 300  # write-then-read rounds per repetition
    compare_connections: tuple = (1, 8, 32, 256)  # against the plain Nameko pipeline
    compare_rounds: int = 3
    compare_seconds: int = 10


QUICK = Params(
    amqp_each_msgs=500,
    amqp_batched_msgs=3000,
    pg_seconds=0.5,
    people=50,
    warmup_seconds=1,
    write_seconds=1,
    lag_reps=3,
    lag_seconds=1,
    e2e_reps=1,
    e2e_seconds=4,
    outbox_rows=2000,
    outage_reps=1,
    profile_seconds=8,
    ryw_reads=60,
    compare_rounds=1,
    compare_seconds=3,
)


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short runs, under a minute (for development)")
    parser.add_argument(
        "--json", type=Path, default=DEFAULT_JSON, help=f"where to write the results (default {DEFAULT_JSON})"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="then sample person, score and gateway with py-spy under load; print their top functions",
    )
    parser.add_argument(
        "--profile-at",
        type=int,
        metavar="CONNECTIONS",
        help="profile under this many connections (default: those of the fastest write-path run)",
    )
    parser.add_argument(
        "--only",
        choices=["compare", "edge", "soak", "profile"],
        help="compare: only this system against the plain Nameko pipeline (the A/B of a change); "
        "edge: only the Traefik hop; soak: only the storage soak (make soak); "
        "profile: only the profile (at --profile-at connections, default 8)",
    )
    parser.add_argument("--minutes", type=float, default=10, help="how long the soak writes (default 10)")
    parser.add_argument("--rate", type=float, default=100, help="the soak's writes a second (default 100)")
    parser.add_argument(
        "--retention",
        type=float,
        metavar="SECONDS",
        help="person's EVENT_HISTORY_RETENTION for the run (default: config.yml's), to see the history level off",
    )
    parser.add_argument(
        "--ab",
        metavar="REV",
        help="also run this system at git revision REV beside the working tree's, alternating (an A/B)",
    )
    parser.add_argument("--no-cluster", action="store_true", help="leave out the run on a three-node RabbitMQ cluster")
    parser.add_argument("--keep-logs", action="store_true", help="keep the services' logs (printed path)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log each measure as it is taken")
    return parser.parse_args(argv)


def _git_revision() -> str:
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=10,
            cwd=Path(__file__).parent,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class _Done(Exception):
    """The sections asked for (--only) are done."""


def run_compare(system: BenchSystem, people: list, p, ab: str | None = None, cluster: bool = True) -> dict:
    started = [compare.start_plain(system, system.log_dir / "plain")]
    try:
        if ab:
            started.append(compare.start_revision(system, ab, system.log_dir / "ab"))
        if cluster:
            started.append(compare.start_cluster(system, system.log_dir / "cluster"))
        for pipeline in started:
            compare.create_people(pipeline, people)
        pipelines = [*started, compare.system_pipeline(system)]
        return compare.compare(
            pipelines, system.node, people, p.compare_connections, p.compare_rounds, p.compare_seconds
        )
    finally:
        for pipeline in started:
            compare.stop(pipeline)


def run_profile(system: BenchSystem, people: list, connections: int, seconds: int, out_dir: Path) -> dict:
    if profile.py_spy_path() is None:
        log.warning("py-spy is not installed; no profile")
        return {}
    out_dir.mkdir(parents=True, exist_ok=True)
    tops = {}
    # One service at a time, each under a load of its own: three samplers at
    # once on this machine's two cores now and then sent one into a busy loop
    # that never ended (py-spy's, killed below), and that service had no profile.
    for name in ("gateway", "person", "score"):
        system.wait_quiet()
        path = out_dir / f"profile-{name}.txt"
        path.unlink(missing_ok=True)
        proc = profile.start(system.services.pid(f"{name}.1"), seconds, path)
        wrk.run_wrk(system.services.url, people, seconds, connections, seed=9000)
        try:
            proc.wait(timeout=seconds + 60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            log.warning("py-spy on %s did not finish; no profile of it", name)
            continue
        if proc.returncode != 0 or not path.exists():
            err = path.with_suffix(".err").read_text(errors="replace")
            log.warning("py-spy on %s failed: %s", name, err[-500:])
            continue
        tops[name] = profile.top_functions(path)
    return tops


def render_profile(tops: dict) -> str:
    lines = []
    for name, top in tops.items():
        lines.append(f"-- py-spy {name}: {top['samples']} samples on CPU; top self time, then top inclusive")
        for frame, share in top["self"][:10]:
            lines.append(f"   self {share * 100:5.1f}%  {frame}")
        for frame, share in [t for t in top["total"] if "<module>" not in t[0]][:12]:
            lines.append(f"   incl {share * 100:5.1f}%  {frame}")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv if argv is not None else sys.argv[1:])
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    if not args.verbose:
        logging.getLogger("bench").setLevel(logging.INFO)
    p = QUICK if args.quick else Params()
    wrk.wrk_path()  # fail before starting anything
    started = time.monotonic()
    run_id = uuid.uuid4().hex[:8]
    # The services log warnings only: logging every event would be a cost of its own.
    service_env = {"LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "WARNING")}
    if args.retention is not None:
        service_env["EVENT_HISTORY_RETENTION"] = f"{args.retention:g}"
    system = BenchSystem(run_id, service_env=service_env)
    # SIGTERM (and a second Ctrl-C) still tear everything down.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    results = {"params": asdict(p)}
    failed = None
    try:
        log.info("run %s: private RabbitMQ node and databases", run_id)
        system.provision()
        results["amqp"] = scenarios.amqp_baselines(system, p)
        results["pg"] = scenarios.pg_baselines(system, p)
        results["services_start_seconds"] = system.start_services()
        people = cpfs(p.people, start=200000011)
        system.create_people(people)
        if args.only == "compare":
            results["compare"] = run_compare(system, people, p, args.ab, not args.no_cluster)
            raise _Done()
        if args.only == "edge":
            results["edge_hop"] = scenarios.edge_hop(system, people, p)
            raise _Done()
        if args.only == "profile":
            at = args.profile_at or 8
            results["profile"] = run_profile(system, people, at, p.profile_seconds, args.json.parent)
            results["profile_connections"] = at
            raise _Done()
        if args.only == "soak":
            results["soak"] = soak.soak(system, people, args.minutes, args.rate, 8, 5 if args.quick else 15)
            raise _Done()
        results["write_path"] = scenarios.write_path(system, people, p)
        results["edge_hop"] = scenarios.edge_hop(system, people, p)
        best_c, best = max(((c, w["rps"]["median"]) for c, w in results["write_path"].items()), key=lambda t: t[1])
        results["lag"] = scenarios.lag(system, people, best / 2, p)
        results["read_your_writes"] = scenarios.read_your_writes(system, people, best / 2, p)
        results["outages"] = scenarios.outages(system, p)
        results["rebuild"] = scenarios.rebuild(system, p)
        results["e2e"] = scenarios.end_to_end(system, people, best_c, p)
        results["peak_rss_mb"] = {
            name.split(".")[0]: None if mib is None else mib * 1024 * 1024 / report.MB
            for name, mib in system.services.peak_rss_mib().items()
        }
        results["compare"] = run_compare(system, people, p, args.ab, not args.no_cluster)
        if args.profile:
            at = args.profile_at or best_c
            results["profile"] = run_profile(system, people, at, p.profile_seconds, args.json.parent)
            results["profile_connections"] = at
    except _Done:
        pass
    except KeyboardInterrupt:
        failed = "interrupted"
    except Exception as exc:
        failed = f"{type(exc).__name__}: {exc}"
        log.exception("benchmark failed")
        if system.services is not None:
            for name in ("person", "score", "gateway"):
                sys.stderr.write(f"--- {name} log (tail) ---\n{system.services.tail(f'{name}.1')}\n")
    finally:
        system.teardown()
    wall = time.monotonic() - started
    meta = {
        "run_id": run_id,
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "revision": _git_revision(),
        "host": socket.gethostname(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "wall_seconds": wall,
        "failed": failed,
        "service_log_level": system.service_env["LOG_LEVEL"],
    }
    rows = report.build_rows(results)
    header = (
        f"make bench{' --quick' if args.quick else ''}  run {run_id}  {meta['when']}  rev {meta['revision']}  "
        f"{meta['cpus']} CPUs  wall {wall:.0f} s  (median of n runs, with min and max)"
    )
    if rows:
        print(report.render(rows, header))
    if results.get("profile"):
        print(f"profile at c={results['profile_connections']}")
        print(render_profile(results["profile"]))
    report.write_json(args.json, meta, rows, results)
    print(f"results: {args.json}")
    if results.get("compare"):
        picture = chart.draw(results["compare"], args.json.with_name("compare.png"), header)
        if picture:
            print(f"picture: {picture}")
    if results.get("soak"):
        picture = soak.draw(results["soak"], args.json.with_name("soak.png"), header)
        if picture:
            print(f"picture: {picture}")
    if args.keep_logs:
        print(f"service logs: {system.log_dir}")
    else:
        import shutil

        shutil.rmtree(system.log_dir, ignore_errors=True)
    if failed:
        print(f"FAILED: {failed}", file=sys.stderr)
        return 1
    return 0
