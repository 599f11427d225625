"""User-facing errors and exit codes: one line, no traceback, a documented exit status.

Both command lines (``python -m loadgen``, ``python -m server_launch``) end through
:func:`run_cli`, so an error the user can fix is printed the same way everywhere and every
exit status comes from :class:`ExitCode`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from enum import IntEnum
from typing import NoReturn

from pydantic import ValidationError


class ExitCode(IntEnum):
    """What a run's exit status means (docs/loadgen.md, "Exit codes")."""

    OK = 0
    INCOMPLETE = 1  # a sweep ended with cells failed or pending
    BAD_INPUT = 2  # the user can fix it: a flag, a field, a file, an unreachable server
    ERROR_BUDGET = 3  # more requests failed than --max-error-rate allows
    SERVER_LOST = 4  # the server died or stopped answering during the run
    WORKER_LOST = 5  # a --workers process or Ray actor died
    INTERRUPTED = 130  # Ctrl-C / SIGTERM


class SpecloadError(Exception):
    """An error the user can fix (bad input, unreachable server). Printed as one line."""

    exit_code = ExitCode.BAD_INPUT


def one_line(message: object, limit: int | None = None) -> str:
    """The message on one line (user-supplied keys and values may carry newlines),
    cut to ``limit`` characters when given."""
    text = " ".join(str(message).split())
    return text if limit is None else text[:limit]


def describe_exception(e: BaseException, limit: int | None = None) -> str:
    """An exception as one line: its message, or its type's name when it has none."""
    return one_line(e, limit) or type(e).__name__


def describe_validation_error(source: str, err: ValidationError) -> str:
    """Turn a pydantic error into one line that names the file and the field."""
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first.get("loc", ()))
    msg = first.get("msg", "invalid value")
    if first.get("type") == "extra_forbidden":
        msg = "unknown field"
    extra = f" ({len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    where = f"field '{loc}'" if loc else "top level"
    return f"{source}: {where}: {msg}{extra}"


class ArgParser(argparse.ArgumentParser):
    """argparse that fails with one line naming the flag, not a usage dump."""

    def error(self, message: str) -> NoReturn:
        self.exit(ExitCode.BAD_INPUT, f"{self.prog}: error: {message} (see --help)\n")


def run_cli(prog: str, body: Callable[[list[str]], int], argv: list[str] | None = None) -> int:
    """Run a command line's ``body``: a SpecloadError becomes ``prog: error: ...`` on one
    line with its exit code, Ctrl-C exits 130, a closed pipe (``| head``) exits quietly."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        return int(body(args))
    except SpecloadError as e:
        print(f"{prog}: error: {one_line(e)}", file=sys.stderr)
        return int(e.exit_code)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED
    except BrokenPipeError:
        return ExitCode.OK
