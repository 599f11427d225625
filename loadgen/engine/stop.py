"""Why a run stops early, and the exit status that says so.

A stop comes from a signal (Ctrl-C, SIGTERM), the error budget, a server that stops
answering, or a worker that dies. Each sets the run's one :class:`StopSignal` with a
:class:`StopReason` (what the exit status is chosen from) and a line of text for people
(what ``summary.json`` keeps as ``stop_reason``); the first stop wins.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from enum import Enum

from loadgen.errors import ExitCode, one_line

# Below this many finished requests the error rate is too noisy to stop a run on.
ERROR_BUDGET_MIN_REQUESTS = 10


class StopReason(Enum):
    """Why a run stopped before its end."""

    INTERRUPTED = "interrupted"  # Ctrl-C / SIGTERM (a worker: told to exit, parent gone)
    ERROR_BUDGET = "error budget"  # more failed than max_error_rate allows
    SERVER_LOST = "server lost"  # health check failed, or connections refused in a row
    WORKER_LOST = "worker lost"  # a worker process or Ray actor died or failed
    RESULTS_UNWRITABLE = "results unwritable"  # disk full, or the directory went away

    @property
    def exit_code(self) -> ExitCode:
        return _EXIT_CODES[self]


_EXIT_CODES = {
    StopReason.INTERRUPTED: ExitCode.INTERRUPTED,
    StopReason.ERROR_BUDGET: ExitCode.ERROR_BUDGET,
    StopReason.SERVER_LOST: ExitCode.SERVER_LOST,
    StopReason.WORKER_LOST: ExitCode.WORKER_LOST,
    # The user can fix it (free space, another --output-dir): the bad-input status.
    StopReason.RESULTS_UNWRITABLE: ExitCode.BAD_INPUT,
}


def exit_code(complete: bool, reason: StopReason | None) -> ExitCode:
    """A run's exit status: OK when every phase finished, else what stopped it."""
    if complete:
        return ExitCode.OK
    return reason.exit_code if reason is not None else ExitCode.INTERRUPTED


@dataclass
class StopSignal:
    """Whether and why the run must stop; shared by the phase, signal handlers and probes."""

    event: asyncio.Event = field(default_factory=asyncio.Event)
    reason: StopReason | None = None
    message: str | None = None  # one line for people: summary.json's stop_reason

    def set(self, reason: StopReason, message: str) -> None:
        if self.reason is None:
            self.reason = reason
            self.message = one_line(message)  # one line, secrets redacted: it is stored
        self.event.set()

    def is_set(self) -> bool:
        return self.event.is_set()


class ErrorBudget:
    """``max_error_rate``: stop the run once more than that share of its measured requests
    has failed. A single process counts its records here as they finish; a multi-worker
    run counts all workers' records in the parent, so the budget is over the whole run.
    With no ``max_rate`` it only counts."""

    def __init__(self, max_rate: float | None, stop: StopSignal) -> None:
        self.max_rate = max_rate
        self.stop = stop
        self.measured = 0
        self.failed = 0

    def count(self, failed: bool, cancelled: bool = False) -> None:
        """One measured request. A cancelled one (the run is already stopping) counts as
        failed but never trips the budget: the stop that cancelled it is the reason."""
        self.measured += 1
        self.failed += failed
        if (
            self.max_rate is not None
            and not cancelled
            and self.measured >= ERROR_BUDGET_MIN_REQUESTS
            and self.failed / self.measured > self.max_rate
        ):
            self.stop.set(
                StopReason.ERROR_BUDGET,
                f"error budget exceeded: {self.failed}/{self.measured} failed "
                f"(> {self.max_rate:.0%})",
            )
