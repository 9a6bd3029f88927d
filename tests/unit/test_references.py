"""What the README, docs/ and the docstrings point at exists: every file path
they name, every ``path.py`` ``name`` they cite, every Sphinx-style
cross-reference (``:func:``, ``:class:``, ``:mod:``, ...) in a docstring. A
rename that leaves one behind fails here."""

import ast
import importlib
import importlib.util
import re
from pathlib import Path

import pytest

from harness.processes import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PACKAGES = ("contracts", "reliable_events", "observability", "ops", "gateway", "person", "score", "harness", "bench")
# A backticked path of this repository: a known top-level folder, or a file at the root.
PATH = re.compile(
    r"`((?:" + "|".join((*PACKAGES, "tests", "docs", "docker", "payloads", ".ci")) + r")/[\w./-]*|"
    r"[\w-]+\.(?:yml|yaml|cfg|toml|lock|in|md))`"
)
LINK = re.compile(r"\]\(([^)#:]+)(?:#[^)]*)?\)")
# `some/file.py` `name`: a name cited in a file.
CITED = re.compile(r"`([\w/]+\.py)` `(\w+)`")
XREF = re.compile(r":(?:func|class|mod|meth|attr|data|exc):`~?([\w.]+)`")


def page_text(page: Path) -> str:
    return page.read_text(encoding="utf-8")


def defined_names(path: Path) -> set:
    """Top-level and class-level names a module defines (functions, classes, assignments)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                for name in ast.walk(target):
                    if isinstance(name, ast.Name):
                        names.add(name.id)
    return names


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_path_a_page_names_exists(page):
    text = page_text(page)
    missing = []
    for name in PATH.findall(text):
        candidate = name.rstrip("/.").split("<")[0]
        if "*" in candidate or "<" in name or candidate.startswith("bench/results"):  # made by make bench
            continue
        if not (ROOT / candidate).exists():
            missing.append(name)
    for link in LINK.findall(text):
        if link.startswith("http"):
            continue
        if not (page.parent / link).exists():
            missing.append(link)
    assert not missing, missing


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_name_a_page_cites_in_a_file_is_there(page):
    missing = []
    for path, name in CITED.findall(page_text(page)):
        file = ROOT / path
        if not file.exists() or name not in defined_names(file):
            missing.append(f"{path} {name}")
    assert not missing, missing


def _has(target, attribute) -> bool:
    """An attribute, or a dataclass field (which has no class attribute without a default)."""
    return hasattr(target, attribute) or attribute in getattr(target, "__dataclass_fields__", {})


def _resolve(dotted: str, module) -> bool:
    """Whether ``dotted`` names something: absolute, relative to ``module``, or
    to one of its classes (a method cited by its bare name)."""
    if module is not None:
        classes = [value for value in vars(module).values() if isinstance(value, type)]
        for cls in classes:
            target, found = cls, True
            for attribute in dotted.split("."):
                if not _has(target, attribute):
                    found = False
                    break
                target = getattr(target, attribute, None)
            if found:
                return True
    if dotted.startswith("."):
        # Relative, as an import would read it: a submodule is found by
        # importing it, not by hoping an earlier test already did.
        if module is None:
            return False
        package = module.__name__ if hasattr(module, "__path__") else module.__package__
        try:
            candidates = [importlib.util.resolve_name(dotted, package)]
        except ImportError:
            return False
    else:
        candidates = [dotted]
        if module is not None:
            candidates += [f"{module.__name__}.{dotted}", f"{module.__name__.rpartition('.')[0]}.{dotted}"]
    for candidate in candidates:
        parts = candidate.lstrip(".").split(".")
        for cut in range(len(parts), 0, -1):
            try:
                target = importlib.import_module(".".join(parts[:cut]))
            except ImportError:
                continue
            rest = parts[cut:]
            while rest and _has(target, rest[0]):
                target = getattr(target, rest.pop(0), None)
            if not rest:
                return True
            break
    return False


MODULES = sorted(
    path.relative_to(ROOT).with_suffix("").as_posix().replace("/", ".")
    for package in PACKAGES[:-2]  # the product's packages
    for path in (ROOT / package).rglob("*.py")
    if "migrations" not in path.parts
)


@pytest.mark.parametrize("name", MODULES)
def test_every_cross_reference_in_a_docstring_resolves(name):
    import ops.quiet  # noqa: F401  (before eventlet)

    source = (ROOT / (name.replace(".", "/") + ".py")).read_text(encoding="utf-8")
    references = XREF.findall(source)
    if not references:
        return
    module = importlib.import_module(name.removesuffix(".__init__"))
    broken = [ref for ref in references if not _resolve(ref, module)]
    assert not broken, broken


CONSTANT = re.compile(r"``(_?[A-Z][A-Z0-9_]{3,})``")


def test_every_constant_a_docstring_or_comment_cites_is_defined():
    """``NAME`` in upper case, in the code: a constant of the project, or a
    setting of config.yml (``_LOCK_AND_FIND_ERASURES``, renamed, was cited for
    a while: this finds such a one)."""
    files = [path for package in PACKAGES for path in (ROOT / package).rglob("*.py")]
    defined = set().union(*(defined_names(path) for path in files))
    settings = set(re.findall(r"\$\{([A-Z_]+)[:}]", (ROOT / "config.yml").read_text(encoding="utf-8")))
    settings |= set(re.findall(r"^\s*([A-Z_]+):", (ROOT / "config.yml").read_text(encoding="utf-8"), re.M))
    # Variables read from the environment, by the code or by compose.
    sources = [path.read_text(encoding="utf-8") for path in files] + [(ROOT / "docker-compose.yml").read_text()]
    settings |= {name for text in sources for name in re.findall(r"""environ(?:\.get\(|\[)["']([A-Z_]+)""", text)}
    settings |= set(re.findall(r"\$\{([A-Z_]+)", sources[-1]))
    # The error codes of the gateway's table are values, not names.
    settings |= set(re.findall(r'"([A-Z_]+)"', (ROOT / "gateway" / "exceptions.py").read_text(encoding="utf-8")))
    cited = {
        (str(path.relative_to(ROOT)), name)
        for path in files
        for name in CONSTANT.findall(path.read_text(encoding="utf-8"))
    }
    sql = {"CONNECT"}  # a privilege the code grants or revokes, cited as SQL
    unknown = sorted((where, name) for where, name in cited if name not in defined | settings | sql)
    assert not unknown, unknown
