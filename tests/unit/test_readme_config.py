"""The README's configuration table is config.yml's: every variable config.yml
reads is there with config.yml's default, and nothing else (config.yml is the
one place defaults are written)."""

import re

from harness.processes import ROOT

SETTING = re.compile(r"\$\{([A-Z_]+):([^}]*)\}")


def config_defaults() -> dict:
    text = (ROOT / "config.yml").read_text(encoding="utf-8")
    return {name: default for name, default in SETTING.findall(text) if name != "VAR"}


def readme_table() -> dict:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    table = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`"):
            continue
        names = re.findall(r"`([A-Z_]+)`", cells[0])
        defaults = re.findall(r"`([^`]*)`", cells[1]) or [""]  # no value shown: empty
        assert len(defaults) == len(names), line
        table.update(zip(names, defaults, strict=True))
    return table


def test_every_setting_is_in_the_readme_with_its_default():
    documented = readme_table()
    expected = config_defaults()
    assert documented == expected
