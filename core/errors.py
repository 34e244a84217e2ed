"""Errors are sentences: the command-line mains end every failure with one line on stderr and a
non-zero exit, never a traceback (``-v`` shows it)."""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Callable


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message, with its type when the message is empty or terse."""
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if not msg:
        return type(exc).__name__
    if isinstance(exc, KeyError | FileNotFoundError | PermissionError) and not msg.startswith(type(exc).__name__):
        return f"{type(exc).__name__}: {msg}"
    return msg


def run_cli(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """``main(argv)`` with every uncaught exception turned into "error: <one line>" and exit 1 (2 for a
    wrong command line is argparse's own). ``-v``/``--verbose`` in argv: the traceback too."""
    args = sys.argv[1:] if argv is None else argv
    verbose = "-v" in args or "--verbose" in args
    try:
        return main(argv)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except SystemExit:
        raise
    except BaseException as exc:
        logging.getLogger("moe").debug("uncaught", exc_info=True)
        if verbose:
            traceback.print_exc()
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 1
