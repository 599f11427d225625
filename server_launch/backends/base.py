"""What a server backend must do, and the pieces every backend shares.

A backend turns one matrix row (a ``ServerRun``) into a running vLLM server and a handle to
watch and stop it. The sweep only talks to this protocol, so the local-process and Docker
backends (and the fakes in the tests) are interchangeable.

Servers are expensive to leave behind (a GPU held by a forgotten container), so every
handle is tracked from start to stop and stopped at interpreter exit, and SIGTERM/SIGHUP
are turned into an exception so ``finally`` blocks run on ``kill`` as they do on Ctrl-C.
"""

from __future__ import annotations

import atexit
import contextlib
import signal
import threading
import time
from abc import ABC, abstractmethod
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Protocol, runtime_checkable

import httpx

from loadgen.errors import SpecloadError

if TYPE_CHECKING:
    from server_launch.matrix import ServerRun

CONTAINER_PORT = 8000  # vLLM's default port, used inside containers


class BackendKind(StrEnum):
    """How vLLM is started: ``--backend`` or a matrix's ``backend:``."""

    DOCKER = "docker"
    LOCAL = "local"


class ServerStartError(SpecloadError):
    """The server did not become healthy: it exited, crashed or timed out.

    ``str(err)`` is one line; the server's last log lines are in ``log_tail``.
    """

    def __init__(self, message: str, log_tail: str = "") -> None:
        super().__init__(message)
        self.log_tail = log_tail


class Interrupted(KeyboardInterrupt):
    """SIGTERM/SIGHUP raised like Ctrl-C: cleanup runs, and ``except Exception`` can't eat it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@runtime_checkable
class ServerHandle(Protocol):
    base_url: str

    def wait_healthy(self, deadline_s: float) -> None:
        """Block until GET /health answers 200; raise ServerStartError after ``deadline_s``."""
        ...

    def is_alive(self) -> bool: ...

    def stop(self) -> None:
        """Stop the server and everything it started. Safe to call twice."""
        ...

    def log_tail(self, n: int = 50) -> str: ...


class ServerBackend(Protocol):
    name: str

    def command(self, run: ServerRun, port: int) -> list[str]:
        """The server's argv (for --dry-run and the sweep's record); starts nothing."""
        ...

    def start(self, run: ServerRun, port: int, log_path: Path) -> ServerHandle: ...


def server_flags(run: ServerRun, port: int, host: str) -> list[str]:
    """vLLM flags after the model: server options, speculative config, then where to listen."""
    return [
        *run.server.vllm_args(),
        *run.spec.vllm_args(),
        "--host",
        host,
        "--port",
        str(port),
    ]


def http_healthy(base_url: str, timeout_s: float = 2.0) -> bool:
    """GET /health == 200. Any error (refused, reset, timeout) means not (yet) healthy."""
    try:
        r = httpx.get(f"{base_url}/health", timeout=timeout_s, trust_env=False)
    except httpx.HTTPError:
        return False
    return r.status_code == 200


class BaseHandle(ABC):
    """What the real handles share: tracked from creation until ``stop()``, which acts once;
    ``wait_healthy`` polls /health and fails early, with the log tail, once the server is
    gone. A backend says only how to tell that, how to stop it and where its log is."""

    health_poll_s: ClassVar[float] = 1.0

    def __init__(self, *, base_url: str, log_path: Path, label: str, stop_grace_s: float) -> None:
        self.base_url = base_url
        self.log_path = log_path
        self.label = label
        self.stop_grace_s = stop_grace_s
        self._stopped = False
        track(self)

    @abstractmethod
    def _describe(self) -> str:
        """How errors name this server, e.g. ``vLLM server 'none' (pid 123)``."""

    @abstractmethod
    def _exit_status(self) -> str | None:
        """None while the server runs; else how it ended, e.g. ``exited with code 1``."""

    @abstractmethod
    def _terminate(self) -> None:
        """Stop the server and everything it started (``stop()`` calls it once)."""

    @abstractmethod
    def is_alive(self) -> bool: ...

    @abstractmethod
    def log_tail(self, n: int = 50) -> str: ...

    def wait_healthy(self, deadline_s: float) -> None:
        """Poll GET /health until 200; ServerStartError once the server is gone or after
        ``deadline_s`` (timing out leaves it running: the caller stops it)."""
        end = time.monotonic() + deadline_s
        while True:
            gone = self._exit_status()
            if gone is not None:
                raise ServerStartError(
                    f"{self._describe()} {gone} before /health answered", self.log_tail()
                )
            if http_healthy(self.base_url):
                return
            if time.monotonic() >= end:
                raise ServerStartError(
                    f"{self._describe()} not healthy after {deadline_s:g}s "
                    f"(GET {self.base_url}/health)",
                    self.log_tail(),
                )
            time.sleep(min(self.health_poll_s, max(0.0, end - time.monotonic())) or 0.01)

    def stop(self) -> None:
        """Stop the server and everything it started. Safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        try:
            self._terminate()
        finally:
            untrack(self)


def port_in_use(port: int, host: str = "127.0.0.1", timeout_s: float = 0.5) -> bool:
    """Something already listens there (a forgotten server would answer our /health)."""
    import socket

    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def wait_port_free(port: int, wait_s: float = 15.0) -> None:
    """Raise unless the port is free (or frees up within ``wait_s``, after a stop)."""
    end = time.monotonic() + wait_s
    while port_in_use(port):
        if time.monotonic() >= end:
            raise SpecloadError(
                f"--port: {port} is already in use on 127.0.0.1 (another server?); "
                "stop it or pick another port"
            )
        time.sleep(0.5)


def tail_file(path: Path, n: int = 50, max_bytes: int = 256 * 1024) -> str:
    """The last ``n`` lines of a (possibly huge, possibly missing) log file."""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except OSError:
        return ""
    lines = data.decode("utf-8", errors="replace").splitlines()
    return "\n".join(lines[-n:])


# --- never leave a server behind ----------------------------------------------------------

_live: dict[int, ServerHandle] = {}
_lock = threading.Lock()
_atexit_done = False


def track(handle: ServerHandle) -> None:
    """Remember a started server so ``stop_all`` (run at exit) can stop it."""
    global _atexit_done
    with _lock:
        _live[id(handle)] = handle
        if not _atexit_done:
            atexit.register(stop_all)
            _atexit_done = True


def untrack(handle: ServerHandle) -> None:
    with _lock:
        _live.pop(id(handle), None)


def live_handles() -> list[ServerHandle]:
    with _lock:
        return list(_live.values())


def stop_all() -> None:
    """Stop every tracked server (atexit, and the CLI on the way out)."""
    for h in live_handles():
        with contextlib.suppress(Exception):
            h.stop()


def _raise_interrupted(signum: int, _frame: object) -> None:
    raise Interrupted(signum)


def install_signal_handlers() -> None:
    """Make SIGTERM/SIGHUP unwind the stack like Ctrl-C does (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) in (signal.SIG_DFL, None):
            signal.signal(sig, _raise_interrupted)
