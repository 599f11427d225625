"""User-facing errors: one line, no traceback, a non-zero exit code."""

from __future__ import annotations

from pydantic import ValidationError


class SpecloadError(Exception):
    """An error the user can fix (bad input, unreachable server). Printed as one line."""

    exit_code = 2


def one_line(message: object) -> str:
    """The message on one line: user-supplied keys and values may carry newlines."""
    return " ".join(str(message).split())


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
