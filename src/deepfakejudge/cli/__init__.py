"""`dfj` entry point. Commands are listed here explicitly; each lives in its own module and calls
library functions. `main(argv)` returns the exit code so the CLI is testable in-process."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from ..backends.base import BackendUnavailable
from ..errors import USER_ERRORS, missing_extra
from . import annotate, bootstrap, data, demo, detect, export, judge, meta_eval, reason, reproduce, serve, train
from .options import expand_split_names
from .parser import dfj_parser

# In the order of the workflow: try it, judge, benchmark detectors, make data, train, evaluate,
# reproduce the paper, serve.
COMMANDS = (demo, judge, detect, reason, bootstrap, train, export, meta_eval, reproduce, serve, annotate, data)


def build_parser() -> argparse.ArgumentParser:
    """The whole `dfj` parser (cli/parser.py builds it)."""
    return dfj_parser(COMMANDS)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        expand_split_names(args)
        return int(args.run(args))
    except USER_ERRORS as exc:
        # Errors the user can act on (a bad option, a bad file, a missing extra): one clear line,
        # no traceback unless DFJ_DEBUG is set. Any other exception is a bug: its traceback shows
        # and the exit code is 1.
        if os.environ.get("DFJ_DEBUG"):
            raise
        print(f"dfj {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        # An optional dependency imported without a MissingExtra of its own: still a user error.
        missing = missing_extra(exc)
        if missing is None or os.environ.get("DFJ_DEBUG"):
            raise
        print(f"dfj {args.command}: error: {missing}", file=sys.stderr)
        return 2
    except BackendUnavailable as exc:
        # The model server is down or never stops rate limiting: rows so far are kept.
        if os.environ.get("DFJ_DEBUG"):
            raise
        print(f"dfj {args.command}: error: {exc}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print(f"dfj {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


