"""Live progress: completed/failed counts and running TTFT/TPOT medians (rich).

Medians are over a window of the latest requests and are recomputed at most a few times a
second, so the progress bar costs the hot path one deque append per request.
"""

from __future__ import annotations

import time
from collections import deque
from statistics import median

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from loadgen.results.records import RequestRecord

_WINDOW = 2000
_REFRESH_S = 0.25


class LiveProgress:
    """A RecordSink that drives a rich progress bar; a no-op when disabled."""

    def __init__(self, enabled: bool, console: Console | None = None) -> None:
        self.enabled = enabled
        self.console = console or Console(stderr=True)
        self._progress: Progress | None = None
        self._task: int | None = None
        self._ttft: deque[float] = deque(maxlen=_WINDOW)
        self._tpot: deque[float] = deque(maxlen=_WINDOW)
        self._done = 0
        self._failed = 0
        self._last = 0.0

    def start_phase(self, name: str, total: int | None) -> None:
        if not self.enabled:
            return
        self.stop()
        self._ttft.clear()
        self._tpot.clear()
        self._done = self._failed = 0
        self._progress = Progress(
            TextColumn("[bold]{task.fields[phase]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=False,
        )
        self._progress.start()
        self._task = self._progress.add_task("", total=total, phase=name, stats="")

    def add(self, record: RequestRecord) -> None:
        if not self.enabled or self._progress is None or record.warmup:
            return
        self._done += 1
        if record.error is not None:
            self._failed += 1
        else:
            if record.ttft_s is not None:
                self._ttft.append(record.ttft_s)
            n = record.output_tokens or 0
            if n > 1 and record.e2e_s is not None and record.ttft_s is not None:
                self._tpot.append((record.e2e_s - record.ttft_s) / (n - 1))
        now = time.monotonic()
        if now - self._last >= _REFRESH_S:
            self._last = now
            self._refresh()

    def _refresh(self) -> None:
        if self._progress is None or self._task is None:
            return
        ttft = f"{median(self._ttft) * 1e3:.1f}" if self._ttft else "-"
        tpot = f"{median(self._tpot) * 1e3:.2f}" if self._tpot else "-"
        stats = f"failed {self._failed}  TTFT p50 {ttft} ms  TPOT p50 {tpot} ms"
        self._progress.update(self._task, completed=self._done, stats=stats)

    def stop(self) -> None:
        if self._progress is not None:
            self._refresh()
            self._progress.stop()
            self._progress = None
            self._task = None
