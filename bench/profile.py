"""py-spy profiles of the services under load: where their CPU goes.

``py-spy record --format raw`` writes collapsed stacks (``frame;frame;... count``);
a function's *self* samples are those where it is the innermost frame, its
*total* samples those where it appears anywhere in the stack (counted once).
"""

import collections
import shutil
import subprocess
import sys
from pathlib import Path

PY_SPY = str(Path(sys.executable).with_name("py-spy"))


def py_spy_path() -> str | None:
    return PY_SPY if Path(PY_SPY).exists() else shutil.which("py-spy")


def start(pid: int, seconds: float, out: Path, rate: int = 100) -> subprocess.Popen:
    """Sample ``pid`` for ``seconds`` into ``out``. Blocking (py-spy pauses the
    process for each sample, some tens of microseconds at 100 a second): with
    ``--nonblocking`` py-spy 0.4.1 read the stacks as they changed under it
    and now and then spun for ever without a sample (three runs of
    2026-12-04 lost one service's profile each)."""
    # Its progress output goes to a file, not a pipe: a pipe nobody reads until
    # the end fills up, and py-spy then blocks on it for ever.
    with open(out.with_suffix(".err"), "wb") as err:
        return subprocess.Popen(
            [
                py_spy_path(),
                "record",
                "--pid",
                str(pid),
                "--duration",
                str(int(seconds)),
                "--rate",
                str(rate),
                "--format",
                "raw",
                "--output",
                str(out),
            ],
            stdout=subprocess.DEVNULL,
            stderr=err,
        )


def _short(frame: str) -> str:
    # "func (path/to/module.py:123)" -> "func (module.py:123)"
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit('/', 1)[-1]}" if where else name


def top_functions(collapsed: Path, limit: int = 12) -> dict:
    """``{"samples", "self": [(frame, share)], "total": [(frame, share)]}`` from a raw py-spy file."""
    own, total, samples = collections.Counter(), collections.Counter(), 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        samples += n
        frames = [_short(f) for f in stack.split(";")]
        own[frames[-1]] += n
        for frame in set(frames):
            total[frame] += n
    if not samples:
        return {"samples": 0, "self": [], "total": []}
    return {
        "samples": samples,
        "self": [(f, n / samples) for f, n in own.most_common(limit)],
        "total": [(f, n / samples) for f, n in total.most_common(limit * 3)],
    }
