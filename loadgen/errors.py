"""User-facing errors and exit codes: one line, no traceback, a documented exit status.

Both command lines (``python -m loadgen``, ``python -m server_launch``) end through
:func:`run_cli`, so an error the user can fix is printed the same way everywhere and every
exit status comes from :class:`ExitCode`.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
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
    """The message on one line (user-supplied keys and values may carry newlines), with
    every registered secret redacted (:func:`redact`), then cut to ``limit`` characters
    when given (redacting first: a cut must not leave half a key behind)."""
    text = redact(" ".join(str(message).split()))
    return text if limit is None else text[:limit]


# --- secrets ---------------------------------------------------------------------------------

REDACTED = "[redacted]"
# A secret's pieces this long are redacted too: a server that echoes a truncated key
# ("Incorrect API key: sk-abc...") must not put most of it into a record.
SECRET_PIECE = 12
_SECRETS: set[str] = set()


def register_secret(value: str | None) -> None:
    """Redact ``value`` from every message from now on (the API key; once per process,
    workers included: each registers the key it is given)."""
    if value and len(value) >= 4:
        _SECRETS.add(value)


def redact(text: str) -> str:
    """``text`` with each registered secret, and any piece of one at least
    ``SECRET_PIECE`` characters long, replaced by ``[redacted]``. Applied to every error
    text before it is stored or printed (:func:`one_line`, records' errors, stop reasons)."""
    if not _SECRETS or not text:
        return text
    for secret in _SECRETS:
        if secret in text:
            text = text.replace(secret, REDACTED)
    for secret in _SECRETS:
        if len(secret) > SECRET_PIECE:
            text = _redact_pieces(text, secret)
    return text


def _redact_pieces(text: str, secret: str) -> str:
    n = SECRET_PIECE
    pieces = {secret[i : i + n] for i in range(len(secret) - n + 1)}
    covered = [False] * len(text)
    for j in range(len(text) - n + 1):
        if text[j : j + n] in pieces:
            covered[j : j + n] = [True] * n
    if not any(covered):
        return text
    out: list[str] = []
    for j, ch in enumerate(text):
        if not covered[j]:
            out.append(ch)
        elif j == 0 or not covered[j - 1]:
            out.append(REDACTED)
    return "".join(out)


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
        code = int(body(args))
    except SpecloadError as e:
        print(f"{prog}: error: {one_line(e)}", file=sys.stderr)
        return int(e.exit_code)
    except KeyboardInterrupt:
        _ignore_interrupts()
        print(f"{prog}: interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED
    except BrokenPipeError:
        return ExitCode.OK
    if code == ExitCode.INTERRUPTED:
        _ignore_interrupts()
    return code


def _ignore_interrupts() -> None:
    """Once a run was interrupted, it is exiting: another Ctrl-C (users press it
    repeatedly) must not turn the clean exit into a KeyboardInterrupt traceback."""
    with contextlib.suppress(ValueError):  # not the main thread: nothing to do
        signal.signal(signal.SIGINT, signal.SIG_IGN)
