"""Load through the gateway with ``wrk`` (Debian's package), driven by a Lua script.

The script rotates over many people and item values, counts 201s and other
statuses itself, and in ``done()`` prints exact figures from wrk's own latency
histogram (``latency:percentile``, microseconds). With ``rate`` set, a ``delay()``
keeps a fixed schedule (monotonic clock through LuaJIT's FFI): request k of a
thread is sent no earlier than ``k / rate`` seconds after its first, so the load
is steady whatever the latency, with at most ``connections`` requests in flight.

A client told ``503`` with ``Retry-After`` (the gateway refusing overload)
waits that long before its next request on that connection, as HTTP clients
are meant to: without it, each refusal is retried at once, and a load of
instant retries measures only how fast refusals can be sent back.
"""

import json
import re
import resource
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

LUA_TEMPLATE = r"""
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk, bench_timespec *tp);
]]
local ts = ffi.new("bench_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, ts)  -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end

local cpfs = {CPFS}
local kind = "KIND"
local interval_ms = INTERVAL_MS
local headers = { ["Content-Type"] = "application/json" }
local threads = {}

function setup(thread)
  thread:set("thread_no", #threads)
  table.insert(threads, thread)
end

function init(args)
  n = thread_no * 7919 + SEED
  created, failed = 0, 0
  codes = {}
  next_ms = nil
  backoff_ms = 0
end

-- wrk calls delay() for the connection whose response() ran just before.
function backoff()
  local wait = backoff_ms
  backoff_ms = 0
  return wait
end

function request()
  n = n + 1
  local cpf = cpfs[n % #cpfs + 1]
  local body
  if kind == "debt" then
    body = string.format('{"value": "%d.%02d"}', 100 + n % 9000, n % 100)
  else
    body = string.format('{"type": "salary", "value": "%d.%02d"}', 100 + n % 9000, n % 100)
  end
  return wrk.format("POST", "/person/" .. cpf .. "/" .. kind, headers, body)
end

function response(status, hdrs, body)
  if status == 503 and hdrs["Retry-After"] then
    backoff_ms = tonumber(hdrs["Retry-After"]) * 1000  -- this connection's next request waits
  end
  if status == 201 then
    created = created + 1
  else
    failed = failed + 1
    codes[tostring(status)] = (codes[tostring(status)] or 0) + 1
  end
end

PACING

function done(summary, latency, requests)
  local c, f, all_codes = 0, 0, {}
  for _, t in ipairs(threads) do
    c = c + t:get("created")
    f = f + t:get("failed")
    for code, count in pairs(t:get("codes")) do all_codes[code] = (all_codes[code] or 0) + count end
  end
  local parts = {}
  for code, count in pairs(all_codes) do table.insert(parts, string.format('"%s": %d', code, count)) end
  local e = summary.errors
  -- Latency of the accepted (201) answers alone, when the others (refused at
  -- once by the gateway's bound) are the fastest: the top share of the
  -- distribution.
  local share = (c + f) > 0 and c / (c + f) or 1
  local p50_accepted = latency:percentile(100 - 50 * share)
  local p99_accepted = latency:percentile(100 - 1 * share)
  io.write(string.format(
    'BENCH {"created": %d, "failed": %d, "codes": {%s}, "duration_us": %d, "requests": %d, ' ..
    '"connect_errors": %d, "read_errors": %d, "write_errors": %d, "timeouts": %d, ' ..
    '"p50_us": %d, "p75_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, "mean_us": %.1f, ' ..
    '"p50_accepted_us": %d, "p99_accepted_us": %d}\n',
    c, f, table.concat(parts, ", "), summary.duration, summary.requests,
    e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(75), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean, p50_accepted, p99_accepted))
end
"""

PACING = r"""
function delay()
  local refused = backoff()
  local now = now_ms()
  if next_ms == nil or now - next_ms > 1000 then next_ms = now end  -- start, or a long stall: resync
  local wait = next_ms - now
  next_ms = next_ms + interval_ms
  if wait < refused then return refused end
  return wait
end
"""
UNPACED = r"""
function delay()
  return backoff()
end
"""

_UNITS_US = {"us": 1, "ms": 1000, "s": 1_000_000, "m": 60_000_000}


def wrk_path() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise RuntimeError("wrk is not installed: apt-get install -y wrk (make bench does it)")
    return path


def lua_script(cpfs: list, kind: str = "income", rate: float | None = None, threads: int = 1, seed: int = 0) -> str:
    interval = threads * 1000.0 / rate if rate else 0
    return (
        LUA_TEMPLATE.replace("{CPFS}", "{" + ", ".join(f'"{c}"' for c in cpfs) + "}")
        .replace("KIND", kind)
        .replace("INTERVAL_MS", f"{interval:.6f}")
        .replace("SEED", str(int(seed)))
        .replace("PACING", PACING if rate else UNPACED)
    )


@dataclass
class WrkResult:
    created: int  # answered 201
    failed: int  # answered with another status
    codes: dict  # those other statuses
    duration: float  # seconds
    socket_errors: int  # connect/read/write errors and timeouts (no answer)
    p50_ms: float
    p75_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    requests_per_sec: float  # wrk's own figure (every answer)
    cpu_seconds: float  # wrk's own CPU (user + system)
    p50_accepted_ms: float = float("nan")  # of the 201s alone (see the Lua's done())
    p99_accepted_ms: float = float("nan")
    latency_table: dict = field(default_factory=dict)  # wrk --latency's printed 50/75/90/99%

    @property
    def created_per_sec(self) -> float:
        return self.created / self.duration if self.duration else 0.0

    @property
    def errors(self) -> int:
        return self.failed + self.socket_errors


def _to_us(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    return float(match.group(1)) * _UNITS_US[match.group(2)] if match else float("nan")


def parse(output: str, cpu_seconds: float = 0.0) -> WrkResult:
    line = next((ln for ln in output.splitlines() if ln.startswith("BENCH ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no BENCH line:\n{output}")
    data = json.loads(line[len("BENCH ") :])
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    table = {f"p{m.group(1)}_ms": _to_us(m.group(2)) / 1000 for m in re.finditer(r"^\s+(\d+)%\s+(\S+)", output, re.M)}
    return WrkResult(
        created=data["created"],
        failed=data["failed"],
        codes=data["codes"],
        duration=data["duration_us"] / 1e6,
        socket_errors=data["connect_errors"] + data["read_errors"] + data["write_errors"] + data["timeouts"],
        p50_ms=data["p50_us"] / 1000,
        p75_ms=data["p75_us"] / 1000,
        p90_ms=data["p90_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        max_ms=data["max_us"] / 1000,
        mean_ms=data["mean_us"] / 1000,
        requests_per_sec=float(rps.group(1)) if rps else float("nan"),
        cpu_seconds=cpu_seconds,
        p50_accepted_ms=data["p50_accepted_us"] / 1000,
        p99_accepted_ms=data["p99_accepted_us"] / 1000,
        latency_table=table,
    )


def run_wrk(
    url: str,
    cpfs: list,
    seconds: float,
    connections: int,
    rate: float | None = None,
    kind: str = "income",
    threads: int = 1,
    timeout: float = 10,
    seed: int = 0,
) -> WrkResult:
    """POST items to ``url`` for ``seconds`` with ``connections`` connections (paced at ``rate``/s if given)."""
    threads = max(1, min(threads, connections))
    with tempfile.NamedTemporaryFile("w", suffix=".lua", prefix="bench-", delete=False) as script:
        script.write(lua_script(cpfs, kind, rate, threads, seed))
    try:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        proc = subprocess.run(
            [
                wrk_path(),
                f"-t{threads}",
                f"-c{connections}",
                f"-d{max(1, round(seconds))}s",
                f"--timeout={timeout:g}s",
                "--latency",
                "-s",
                script.name,
                url,
            ],
            capture_output=True,
            text=True,
            timeout=seconds + timeout + 30,
        )
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    finally:
        Path(script.name).unlink(missing_ok=True)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return parse(proc.stdout, cpu)
