"""Local workers: ``python`` subprocesses on this host, one end of a socketpair each.

Fresh subprocesses rather than ``multiprocessing``: no fork of a process with a running
event loop, and no re-import of the caller's ``__main__`` in every worker (a script without
a main guard would crash). A worker ignores SIGINT and SIGTERM, so a terminal's Ctrl-C
reaches it through the parent's orderly stop (in-flight requests written as cancelled),
and it exits when the parent's end of the socket closes (the parent died).

The parent's side is :class:`LocalWorker`; the worker's is :func:`worker_main`, which
serves the parent's messages (init, phase, go, stop, exit) with a
:class:`~loadgen.engine.workers.core.WorkerCore`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from loadgen.engine.stop import StopReason, StopSignal
from loadgen.engine.workers.core import (
    STOP_GRACE_S,
    PhaseJob,
    WorkerCore,
    WorkerInit,
    WorkerLost,
    WorkerResult,
    wait_go_or_stop,
)
from loadgen.errors import one_line
from loadgen.results.files import RecordWriter

GO_MARGIN_S = 0.1  # the shared start is this far ahead of the go message


_PACKAGE_ROOT = str(Path(__file__).resolve().parents[3])
_ENTRY = (
    "import sys; from loadgen.engine.workers.local import worker_entry; worker_entry(sys.argv[1:])"
)


def worker_entry(argv: list[str]) -> None:
    """``python -c _ENTRY INDEX FD``: a local worker on the socket FD."""
    worker_main(int(argv[0]), Connection(int(argv[1])))


def worker_main(index: int, conn: Connection) -> None:
    """A local worker: serve the parent's messages until it says exit or goes away."""
    # The parent stops us in order (in-flight requests written as cancelled); a signal
    # sent to the whole process group (timeout, systemd, Ctrl-C) must not cut that short.
    # A parent that dies closes our socket, and we exit then.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        import uvloop  # type: ignore[import-not-found]

        uvloop.run(_serve(index, conn))
    except ImportError:
        asyncio.run(_serve(index, conn))


async def _serve(index: int, conn: Connection) -> None:
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()

    def readable() -> None:
        try:
            while conn.poll():
                inbox.put_nowait(conn.recv())
        except (EOFError, OSError):
            loop.remove_reader(conn.fileno())
            inbox.put_nowait(("eof",))

    def send(*msg: Any) -> None:
        with contextlib.suppress(OSError, ValueError):
            conn.send(msg)

    loop.add_reader(conn.fileno(), readable)
    core: WorkerCore | None = None
    stop: StopSignal | None = None
    go: asyncio.Future[tuple[float, float]] | None = None
    task: asyncio.Task[None] | None = None

    async def run_one(job: PhaseJob, stop: StopSignal, go: asyncio.Future[Any]) -> None:
        assert core is not None
        try:
            assert job.records_path is not None
            with RecordWriter(Path(job.records_path)) as writer:

                async def rendezvous() -> tuple[float, float]:
                    send("ready")
                    return await wait_go_or_stop(go, stop, core.clock)

                outcome = await core.run_phase(job, writer, rendezvous, stop)
            send("done", outcome)
        except Exception as e:
            send("error", one_line(f"{type(e).__name__}: {e}"))

    while True:
        msg = await inbox.get()
        kind = msg[0]
        if kind == "init":
            core = WorkerCore(index, msg[1])
        elif kind == "phase":
            stop, go = StopSignal(), loop.create_future()
            task = asyncio.create_task(run_one(msg[1], stop, go))
        elif kind == "go":
            if go is not None and not go.done():
                go.set_result((msg[1], msg[2]))
        elif kind == "stop":
            if stop is not None:
                stop.set(msg[1], msg[2])
        elif kind in ("exit", "eof"):
            if stop is not None:
                stop.set(StopReason.INTERRUPTED, "parent gone" if kind == "eof" else "exit")
            if task is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(task, STOP_GRACE_S)
            return


# --- the parent's side -----------------------------------------------------


class FileTail:
    """New complete lines of a file that another process appends to."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._pos = 0

    def read(self) -> list[bytes]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._pos)
                data = f.read()
        except FileNotFoundError:
            return []
        cut = data.rfind(b"\n")
        if cut < 0:
            return []
        self._pos += cut + 1
        return data[: cut + 1].splitlines()


def _exit_text(code: int | None) -> str:
    if code is None:
        return "stopped answering"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


class LocalWorker:
    """A worker process on this host: ``python -c`` running :func:`worker_entry`, talked to
    over a socketpair. A plain subprocess, not ``multiprocessing``: that would re-import
    the caller's ``__main__`` in every worker (a script without a main guard would crash)."""

    def __init__(self, index: int) -> None:
        self.index = index
        mine, theirs = socket.socketpair()
        child_fd = theirs.detach()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_PACKAGE_ROOT, env.get("PYTHONPATH")]))
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _ENTRY, str(index), str(child_fd)],
                pass_fds=(child_fd,),
                stdin=subprocess.DEVNULL,
                env=env,
            )
        finally:
            os.close(child_fd)
        self.conn = Connection(mine.detach())
        self._msgs: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        self._lost: str | None = None
        self._closing = False
        self._tail: FileTail | None = None
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.conn.fileno(), self._readable)

    def _readable(self) -> None:
        try:
            while self.conn.poll():
                self._msgs.put_nowait(self.conn.recv())
        except (EOFError, OSError):
            self._gone()  # the process ended (its end of the socket closed)

    def _gone(self) -> None:
        with contextlib.suppress(Exception):
            self._loop.remove_reader(self.conn.fileno())
        if self._lost is None and not self._closing:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(2.0)
            self._lost = f"worker {self.index} {_exit_text(self.proc.poll())}"
            self._msgs.put_nowait(("lost", self._lost))

    def _send(self, *msg: Any) -> None:
        if self._lost is not None:
            raise WorkerLost(self._lost)
        try:
            self.conn.send(msg)
        except (OSError, ValueError) as e:
            raise WorkerLost(f"worker {self.index}: pipe closed ({e})") from None

    async def _expect(self, kind: str) -> tuple[Any, ...]:
        while True:
            msg = await self._msgs.get()
            if msg[0] == kind:
                return msg
            if msg[0] == "lost":
                self._msgs.put_nowait(msg)  # every later wait fails too
                raise WorkerLost(msg[1])
            if msg[0] == "error":
                self._lost = f"worker {self.index} failed: {msg[1]}"
                self._msgs.put_nowait(("lost", self._lost))
                raise WorkerLost(self._lost)

    async def init(self, init: WorkerInit) -> None:
        self._send("init", init)

    async def begin(self, job: PhaseJob, records_path: Path) -> None:
        self._tail = FileTail(records_path)
        self._send("phase", job)

    async def ready(self) -> None:
        await self._expect("ready")

    async def go(self, wall: float, at: float) -> None:
        self._send("go", wall, at)

    def stop(self, reason: StopReason, message: str) -> None:
        with contextlib.suppress(WorkerLost):
            self._send("stop", reason, message)

    async def done(self) -> WorkerResult:
        return (await self._expect("done"))[1]

    async def new_lines(self) -> list[bytes]:
        return self._tail.read() if self._tail is not None else []

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()

    async def close(self) -> None:
        with contextlib.suppress(WorkerLost):
            self._send("exit")
        self._closing = True
        deadline = time.monotonic() + STOP_GRACE_S
        while self.proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for end in (self.proc.terminate, self.proc.kill):
            if self.proc.poll() is None:
                end()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    await asyncio.to_thread(self.proc.wait, 3.0)
        with contextlib.suppress(Exception):
            self._loop.remove_reader(self.conn.fileno())
        self.conn.close()
