"""What the vLLM a backend starts can do, asked of the server itself (its ``--help``), never
guessed from a version number: the flags that make it return its own per-request figures
with each response, which loadgen records (``server_metrics``) and summarises.

- ``--enable-per-request-metrics``: server TTFT, queue time, generation time, mean ITL;
- ``--per-request-spec-decode-metrics summary|detailed``: the request's acceptance (mean
  acceptance length, draft acceptance rate, the histogram of accepted drafts per verify
  step; ``detailed`` adds the per-step arrays, one entry per verify step).

vLLM 0.32 has both; older servers (the GPU image's 0.26.0 may be one) start without them,
and their records simply carry no ``server_metrics``.
"""

from __future__ import annotations

import functools
import os
import subprocess
from enum import StrEnum
from pathlib import Path

PER_REQUEST = "--enable-per-request-metrics"
PER_REQUEST_SPEC = "--per-request-spec-decode-metrics"
NO_LOG_STATS = "--disable-log-stats"  # vLLM refuses PER_REQUEST with it
HELP_TIMEOUT_S = 180.0
CLI_MODULE = "vllm.entrypoints.cli.main"  # `python -m vllm.entrypoints.cli.main serve`: vllm's CLI


class PerRequestMetrics(StrEnum):
    """``python -m server_launch --per-request-metrics``."""

    AUTO = "auto"  # timing + acceptance summary, where the server has the flags
    DETAILED = "detailed"  # timing + acceptance with the per-step arrays
    OFF = "off"


def per_request_flags(
    help_text: str, extra_args: list[str], mode: PerRequestMetrics, *, speculative: bool
) -> list[str]:
    """The flags to add to a server command line: those its ``--help`` lists, unless the
    user's own ``extra_args`` already set them. vLLM 0.32 refuses to start with per-request
    timing and ``--disable-log-stats``, and with the acceptance flag but no speculative
    config (its help says "no effect" then; its config check says otherwise), so neither
    is added there."""
    if mode is PerRequestMetrics.OFF:
        return []
    given = {a.split("=", 1)[0] for a in extra_args}
    out: list[str] = []
    if PER_REQUEST in help_text and PER_REQUEST not in given and NO_LOG_STATS not in given:
        out.append(PER_REQUEST)
    if speculative and PER_REQUEST_SPEC in help_text and PER_REQUEST_SPEC not in given:
        level = "detailed" if mode is PerRequestMetrics.DETAILED else "summary"
        out += [PER_REQUEST_SPEC, level]
    return out


def help_argv(prefix: list[str]) -> list[str] | None:
    """How to ask a local server command for its flags: ``vllm serve --help=all`` (its
    plain --help lists groups only, likewise ``python -m vllm.entrypoints.cli.main serve``
    where no ``vllm`` script is installed), the API-server module's ``--help``; None for any
    other command (a wrapper script might start a server instead of printing help)."""
    from server_launch.backends.local import API_SERVER_MODULE

    if len(prefix) >= 3 and prefix[-2:] == ["-m", API_SERVER_MODULE]:
        return [*prefix, "--help"]
    if len(prefix) >= 2 and Path(prefix[-2]).name == "vllm" and prefix[-1] == "serve":
        return [*prefix, "--help=all"]
    if len(prefix) >= 4 and prefix[-3:] == ["-m", CLI_MODULE, "serve"]:
        return [*prefix, "--help=all"]
    return None


def _cache_path(argv: list[str]) -> Path | None:
    """Where the help of this interpreter's own vLLM is kept between sweeps (printing it
    imports all of vLLM: many seconds). Keyed by the command and the installed vLLM's
    files, so an upgrade asks again; None for another interpreter (its vLLM is unknown)."""
    import hashlib
    import importlib.util
    import sys

    if argv[0] != sys.executable:
        return None
    spec = importlib.util.find_spec("vllm")
    if spec is None or spec.origin is None:
        return None
    origin = Path(spec.origin)
    stamp = f"{argv}|{origin}|{origin.stat().st_mtime_ns}|{origin.parent.stat().st_mtime_ns}"
    key = hashlib.sha256(stamp.encode()).hexdigest()[:16]
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "specload"
    return root / f"vllm-help-{key}.txt"


@functools.cache
def local_help_text(prefix: tuple[str, ...]) -> str:
    """The server command's help text ("" when it cannot say): once per command, and kept
    on disk for this interpreter's own vLLM (see :func:`_cache_path`)."""
    argv = help_argv(list(prefix))
    if argv is None:
        return ""
    cache = _cache_path(argv)
    if cache is not None and cache.is_file():
        return cache.read_text()
    text = _ask_help(argv)
    if cache is not None and text:
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_name(f".{cache.name}.{os.getpid()}")
            tmp.write_text(text)
            os.replace(tmp, cache)
        except OSError:
            pass  # a read-only home: ask again next time
    return text


def _ask_help(argv: list[str]) -> str:
    try:
        r = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=HELP_TIMEOUT_S,
            check=False,
            env={**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")},
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return r.stdout if r.returncode == 0 else ""
