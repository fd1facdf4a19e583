"""The `lsc4rec` command imports a subcommand's module only when that command runs, and each
subcommand module imports the project at its top."""

from __future__ import annotations

import argparse
import ast
import importlib
import subprocess
import sys
from pathlib import Path

from cli.main import COMMANDS

ROOT = Path(__file__).resolve().parents[1]
PROJECT = ("cli", "cloud", "device", "seqrec", "shared", "simulations", "protos")


def test_help_imports_no_subcommand_module_and_no_torch():
    code = (
        "import sys\n"
        "from cli.main import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in sys.modules if m.startswith('cli.') or m == 'torch'))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "['cli.common', 'cli.main']"
    assert "inspect-device" in done.stdout and "train-srm" in done.stdout


def test_the_command_table_names_what_each_module_registers():
    for module in sorted({owner for _, owner, _ in COMMANDS}):
        parser = argparse.ArgumentParser()
        subparsers = parser.add_subparsers()
        importlib.import_module(module).add_parser(subparsers)
        listed = {name: text for name, owner, text in COMMANDS if owner == module}
        registered = {action.dest: action.help for action in subparsers._choices_actions}
        assert registered == listed, module


def test_subcommand_modules_import_the_project_at_the_top():
    inside = []
    for path in sorted((ROOT / "cli").glob("*.py")):
        tree = ast.parse(path.read_text())
        for function in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)):
            for node in ast.walk(function):
                names = []
                if isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module]
                elif isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                inside += [f"{path.name}:{node.lineno} {n}" for n in names
                           if n.split(".")[0] in PROJECT]  # fmt: skip
    assert inside == []
