"""The examples of the README and of docs/*.md are real answers: each one is run here against a running system.

- Every ``$ curl ...`` line of a ``sh`` block that talks to ``localhost:8000``
  (Traefik, in front of two gateways as under ``make run``), ``localhost:8001``
  or ``8002`` (each gateway's own port), ``localhost:8082`` (Traefik's ping and
  metrics) or ``localhost:9101``/``9102`` (person's and score's metrics) is
  run, and the lines under it must match the answer: the status line, each
  header shown (others may be there too) and the body. A section whose
  examples send bearer tokens runs with the gateways started with the
  README's ``API_TOKENS='...' make run``.
- Every ``$`` line of an operator command (``.venv/bin/deadletters``,
  ``.venv/bin/python -m ops.rebuild``) is run as written, against the test's system,
  and its stdout must match the lines under it; ``$ make shell`` is run and
  fed the next ``>>>`` line, whose answer it must print.
- Every other ``>>> `` line of a ``nameko shell`` block is evaluated with ``n.rpc``
  (Nameko's standalone RPC proxy, what the shell's ``n.rpc`` is; ``n.dispatch_event``
  likewise), and the lines
  under it must match the value's ``repr``.

What differs between runs is a placeholder on both sides: timestamps, UUIDs,
``Server-Timing`` durations and metric values; ``...`` in the README stands
for any text. Each README section (``##``/``###``) with examples starts from
empty databases, as its text says, so ids and sequences are the README's (and
from just-started services where it reads metrics, which count from the start).
A change that alters an answer fails here until the README follows. To see
what the system answers now, section by section: ``README_PRINT=1 pytest -s
tests/e2e/test_readme.py`` prints every answer (and checks nothing).
"""

import os
import re
import subprocess
import sys
import time
import types
from dataclasses import dataclass, field

import pytest
from nameko.standalone.events import event_dispatcher
from nameko.standalone.rpc import ClusterRpcProxy

from harness.processes import ROOT, System, free_port

pytestmark = pytest.mark.e2e

README = ROOT / "README.md"
# The README and the pages it sends the reader to: every example in them is run.
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
LOCAL = re.compile(r"localhost:(8000|8001|8002|8082|9101|9102)")
TOKENS_RUN = re.compile(r"^\$ API_TOKENS='([^']+)' make run$", re.M)
# The command lines run as they are written: the operator commands, and
# `make shell` (fed the block's first `>>>` line).
CLI = (".venv/bin/deadletters", ".venv/bin/rebuild-replica", ".venv/bin/python -m ops.", "make shell")
PLACEHOLDERS = [
    (re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(\+00:00|Z)?"), "<time>"),
    (re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"), "<uuid>"),
    (re.compile(r"dur=[0-9.]+"), "dur=<ms>"),
    # a Prometheus sample line: name{labels} value
    (re.compile(r"^([a-zA-Z_:][\w:]*(\{[^}]*\})?) [-+0-9.eE]+(inf)?$", re.M), r"\1 <n>"),
]
# What score does after the call above it returned (applying events, parking a
# bad one) may not be done yet when this is read: read again until it is (bounded).
ASYNC_READ = re.compile(r"n\.rpc\.score\.(get_score|list_dead_letters)\(")
PRINT = bool(os.environ.get("README_PRINT"))


@dataclass
class Example:
    kind: str  # "curl" or "shell"
    command: str
    expected: list = field(default_factory=list)


@dataclass
class Section:
    title: str
    examples: list = field(default_factory=list)


def sections() -> list:
    """The sections of the README and of docs/ that have runnable examples, in order."""
    found, current, block, example = [], None, None, None
    lines = [(page, line) for page in PAGES for line in page.read_text(encoding="utf-8").splitlines()]
    for page, line in lines:
        if block is None and line.startswith("#"):
            current = Section(f"{page.relative_to(ROOT)}: {line.lstrip('#').strip()}")
            found.append(current)
            continue
        if line.startswith("```"):
            block = None if block is not None else line[3:].strip()
            example = None
            continue
        if block is None:
            continue
        if line.startswith("$ ") and line[2:].startswith("curl") and LOCAL.search(line):
            example = Example("curl", line[2:])
            current.examples.append(example)
        elif line.startswith("$ ") and line[2:].startswith(CLI):
            example = Example("cli", line[2:])
            current.examples.append(example)
        elif line.startswith(">>> "):
            example = Example("shell", line[4:].split("  # ")[0])
            current.examples.append(example)
        elif line.startswith("$ "):
            example = None  # not an HTTP or RPC example (a command line tool)
        elif example is not None:
            example.expected.append(line)
    return [section for section in found if section.examples]


def normalized(text: str) -> str:
    for pattern, placeholder in PLACEHOLDERS:
        text = pattern.sub(placeholder, text)
    return text.strip()


def matches(expected: str, actual: str) -> bool:
    """``...`` in an example stands for anything; on a line of its own, for any
    lines or none (what comes before the lines shown may vary from run to run)."""
    pattern = re.escape(normalized(expected)).replace(re.escape("...\n"), "(?:.*?\n)?").replace(re.escape("..."), ".*?")
    return re.fullmatch(pattern, normalized(actual), re.S) is not None


def check_curl(example, ports):
    command = LOCAL.sub(lambda m: f"127.0.0.1:{ports[m[1]]}", example.command)
    proc = subprocess.run(command, shell=True, cwd=ROOT, capture_output=True, text=True, timeout=30)
    for readme_port, port in ports.items():  # an answer naming an address names the README's
        proc.stdout = proc.stdout.replace(f"127.0.0.1:{port}", f"127.0.0.1:{readme_port}")
    if PRINT:
        print(f"$ {example.command}\n{proc.stdout.replace(chr(13), '')}")
        return
    assert proc.returncode == 0, f"{example.command}\n{proc.stderr}"
    expected = [line for line in example.expected if line.strip()]
    if not expected:
        return
    if not expected[0].startswith("HTTP/"):
        assert matches("\n".join(expected), proc.stdout), (
            f"{example.command}\nREADME:\n{expected}\nactual:\n{proc.stdout}"
        )
        return
    head, _, body = proc.stdout.replace("\r\n", "\n").partition("\n\n")
    status, *header_lines = head.splitlines()
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    assert status.strip() == expected[0], f"{example.command}\nREADME: {expected[0]}\nactual: {status}\n{body}"
    shown_body = []
    for line in expected[1:]:
        name, colon, value = line.partition(":")
        if colon and not shown_body and re.fullmatch(r"[A-Za-z-]+", name):
            actual = headers.get(name.lower())
            assert actual is not None and matches(value, actual), f"{example.command}\n{name}: {value!r} vs {actual!r}"
        else:
            shown_body.append(line)
    if shown_body:
        readme = "\n".join(shown_body)
        assert matches(readme, body), f"{example.command}\nREADME:\n{readme}\nactual:\n{body}"


def check_cli(example, system, following=None):
    """Run a command line as written, against the test's system; its stdout
    must match the lines under it. ``make shell`` is fed ``following`` (the
    next ``>>>`` example), whose answer it must print."""
    env = {k: v for k, v in system.env.items() if not k.startswith("MAKE")}
    command = example.command
    stdin = None
    if command == "make shell":
        command, stdin = "make --no-print-directory -s shell", following.command + "\n"
    proc = subprocess.run(
        command, shell=True, cwd=ROOT, env=env, input=stdin, capture_output=True, text=True, timeout=60
    )
    if PRINT:
        print(f"$ {example.command}\n{proc.stdout}")
        return
    if stdin is not None:
        # The console prints its answer after its prompt: the text between the prompts.
        answers = [part.strip() for part in proc.stdout.split(">>>") if part.strip()]
        assert answers and matches("\n".join(following.expected), answers[0]), (
            f"make shell\n{following.command}\nREADME:\n{following.expected}\nactual:\n{proc.stdout}\n{proc.stderr}"
        )
        return
    expected = "\n".join(example.expected)
    assert matches(expected, proc.stdout), (
        f"{example.command}\nREADME:\n{expected}\nactual:\n{proc.stdout}{proc.stderr}"
    )


def evaluated(command, namespace) -> str:
    """What the console would print for ``command``: the repr of its value, if any."""
    shown = []
    console_hook = sys.displayhook
    sys.displayhook = lambda value: value is None or shown.append(value)
    try:
        exec(compile(command, "<README>", "single"), namespace)  # noqa: S102  (the README's own examples)
    finally:
        sys.displayhook = console_hook
    return "\n".join(repr(value) for value in shown)


def check_shell(example, namespace):
    expected = "\n".join(example.expected)
    deadline = time.monotonic() + (5 if ASYNC_READ.search(example.command) else 0)
    actual = evaluated(example.command, namespace)
    if PRINT:
        print(f">>> {example.command}\n{actual}")
        return
    while expected.strip() and not matches(expected, actual) and time.monotonic() < deadline:
        time.sleep(0.1)
        actual = evaluated(example.command, namespace)
    if expected.strip():
        assert matches(expected, actual), f">>> {example.command}\nREADME:\n{expected}\nactual:\n{actual}"


def readme_tokens() -> str:
    """The ``API_TOKENS`` the README's ``API_TOKENS='...' make run`` starts with."""
    (tokens,) = {t for page in PAGES for t in TOKENS_RUN.findall(page.read_text(encoding="utf-8"))}
    return tokens


def start(system, tokens=""):
    system.start_all()
    system.tokens = tokens


def use_tokens(system, tokens):
    """The gateways restarted with ``API_TOKENS=tokens`` (on their ports: Traefik takes them back)."""
    if system.tokens == tokens:
        return
    for name in sorted(system.gateways):
        system.stop(name)
        system.start("gateway", int(name.split(".")[1]), API_TOKENS=tokens)
    system.wait_healthy()
    system.wait_edge_sees(len(system.gateways))
    system.tokens = tokens


@pytest.fixture(scope="module")
def readme_system(amqp_uri, db_uris, tmp_path_factory):
    """The system as make run has it: Traefik, two gateways, metrics on known ports."""
    metrics = {"9101": free_port(), "9102": free_port()}
    system = System(
        amqp_uri,
        db_uris,
        tmp_path_factory.mktemp("readme-logs"),
        edge=True,
        gateways=2,
        PERSON_METRICS_ADDRESS=f"127.0.0.1:{metrics['9101']}",
        SCORE_METRICS_ADDRESS=f"127.0.0.1:{metrics['9102']}",
    )
    try:
        start(system)
        port = lambda url: url.rsplit(":", 1)[1]  # noqa: E731
        ports = {
            "8000": port(system.url),
            "8001": port(system.gateways["gateway.1"]),
            "8002": port(system.gateways["gateway.2"]),
            "8082": port(system.edge_ops),
            **metrics,
        }
        yield system, ports
    finally:
        system.stop_all()


SECTIONS = sections()


def test_the_readme_has_examples_to_run():
    kinds = {example.kind for section in SECTIONS for example in section.examples}
    assert kinds == {"curl", "shell", "cli"}, [s.title for s in SECTIONS]
    commands = {example.command.split()[0] for s in SECTIONS for example in s.examples if example.kind == "cli"}
    assert commands >= {"make", ".venv/bin/python", ".venv/bin/deadletters"}, commands


@pytest.mark.parametrize("section", SECTIONS, ids=[section.title for section in SECTIONS])
def test_readme_section(section, readme_system, clean_databases, amqp_uri):
    system, ports = readme_system
    tokens = readme_tokens() if any("Bearer" in example.command for example in section.examples) else ""
    if any("/metrics" in example.command for example in section.examples):
        # Metrics count since the process started: these need fresh processes.
        system.stop_all()
        start(system)
    use_tokens(system, tokens)
    with ClusterRpcProxy({"AMQP_URI": amqp_uri}, timeout=15) as rpc:
        dispatch = event_dispatcher({"AMQP_URI": amqp_uri})
        shell = types.SimpleNamespace(rpc=rpc, dispatch_event=dispatch)  # the shell's ``n``
        namespace = {"n": shell}
        examples = iter(section.examples)
        for example in examples:
            if example.kind == "curl":
                check_curl(example, ports)
            elif example.kind == "cli":
                following = next(examples) if example.command == "make shell" else None
                check_cli(example, system, following)
            else:
                check_shell(example, namespace)
