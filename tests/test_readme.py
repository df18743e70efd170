"""The README's Python and CLI snippets name things that exist (a moved module broke one before)."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

from medfake import cli

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_every_python_import_in_the_readme_resolves():
    imports = re.findall(r"from (medfake[\w.]*) import ([\w, ]+)", README)
    assert imports, "no `from medfake… import` in the README: the check would be vacuous"
    for module_name, names in imports:
        module = importlib.import_module(module_name)
        for name in (n.strip() for n in names.split(",")):
            assert hasattr(module, name), f"README imports {name} from {module_name}, which has no such name"


def test_every_medfake_step_in_the_readme_is_a_cli_command():
    steps = set(re.findall(r"^\s*(?:\$\s*)?medfake ([a-z][a-z-]*)", README, re.M))
    assert {"train", "scan", "promote", "paper"} <= steps
    known = set(cli.COMMANDS)
    assert steps <= known, f"README uses unknown medfake commands: {sorted(steps - known)}"
