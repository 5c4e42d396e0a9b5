"""The `dfj` argument parser, built from command modules (each has `register(subparsers)`).

It imports no command: `cli/__init__.py` passes every command (`COMMANDS`), and a command that runs
another in-process (`dfj demo` runs `dfj judge`, `dfj reproduce` runs judge and detect) builds the
parser of just those, without importing the package that imports it.
"""

from __future__ import annotations

import argparse
from types import ModuleType
from typing import Iterable

from .._version import __version__


def dfj_parser(commands: Iterable[ModuleType]) -> argparse.ArgumentParser:
    """`dfj` with `--version` and one subcommand per module of `commands`."""
    parser = argparse.ArgumentParser(
        prog="dfj",
        description="DeepfakeJudge: judge deepfake detectors' explanations with VLM judges.",
    )
    parser.add_argument("--version", action="version", version=f"deepfakejudge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in commands:
        command.register(sub)
    return parser
