"""server_launch asks the server's own --help whether it has the per-request metrics flags,
and adds only those (never for a command it cannot ask, never twice, never alongside
--disable-log-stats, which vLLM refuses with per-request timing)."""

from __future__ import annotations

import sys

import pytest

from server_launch import capabilities
from server_launch.backends.local import API_SERVER_MODULE, LocalBackend
from server_launch.capabilities import (
    PerRequestMetrics,
    help_argv,
    local_help_text,
    per_request_flags,
)
from server_launch.specs import SpecConfig
from tests.test_backends import fake_run

HELP_032 = "[--enable-per-request-metrics | --no-enable-per-request-metrics]\n" + (
    "[--per-request-spec-decode-metrics {detailed,none,summary}]\n"
)
HELP_OLD = "[--enable-prompt-tokens-details]\n[--disable-log-stats]\n"
SPEC = ["--per-request-spec-decode-metrics", "summary"]


def test_flags_follow_the_help_text() -> None:
    def flags(help_text: str, extra: list[str], mode: str = "auto", spec: bool = True):
        return per_request_flags(help_text, extra, PerRequestMetrics(mode), speculative=spec)

    assert flags(HELP_032, []) == ["--enable-per-request-metrics", *SPEC]
    assert flags(HELP_OLD, []) == []  # an older vLLM: nothing to add
    assert flags(HELP_032, [], "detailed")[-1] == "detailed"
    assert flags(HELP_032, [], "off") == []
    assert flags(HELP_032, ["--disable-log-stats"]) == SPEC  # vLLM refuses timing with it
    # vLLM 0.32 refuses the acceptance flag without a speculative config
    assert flags(HELP_032, [], spec=False) == ["--enable-per-request-metrics"]
    given = ["--per-request-spec-decode-metrics=detailed"]
    assert flags(HELP_032, given) == ["--enable-per-request-metrics"]


def test_only_vllm_commands_are_asked() -> None:
    py = sys.executable
    assert help_argv([py, "-m", API_SERVER_MODULE]) == [py, "-m", API_SERVER_MODULE, "--help"]
    assert help_argv(["/opt/bin/vllm", "serve"]) == ["/opt/bin/vllm", "serve", "--help=all"]
    # vllm's CLI as a module (a vLLM installed with --target has no `vllm` script): its
    # plain --help lists groups only, so it is asked for all of them
    cli = [py, "-m", "vllm.entrypoints.cli.main", "serve"]
    assert help_argv(cli) == [*cli, "--help=all"]
    assert help_argv([py, "-m", "vllm.entrypoints.cli.main", "bench"]) is None
    assert help_argv([py, "fake_vllm.py"]) is None  # a wrapper might start a server
    assert local_help_text((py, "fake_vllm.py")) == ""


def test_local_backend_adds_what_the_server_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    run = fake_run()
    run.server.extra_args = []
    monkeypatch.setattr(capabilities, "local_help_text", lambda prefix: HELP_032)
    monkeypatch.setattr("server_launch.backends.local.local_help_text", lambda prefix: HELP_032)
    prefix = [sys.executable, "-m", API_SERVER_MODULE]
    argv = LocalBackend(prefix, per_request=PerRequestMetrics.AUTO).command(run, 9000)
    assert argv[-3:] == ["--enable-per-request-metrics", *SPEC]
    assert argv.index("--port") < argv.index("--enable-per-request-metrics")
    assert "--enable-per-request-metrics" not in LocalBackend(prefix).command(run, 9000)
    run.spec = SpecConfig(method="none")
    argv = LocalBackend(prefix, per_request=PerRequestMetrics.AUTO).command(run, 9000)
    assert argv[-1] == "--enable-per-request-metrics"


def test_this_interpreters_vllm_help_is_cached_on_disk(tmp_path, monkeypatch) -> None:
    """Printing vLLM's help imports all of vLLM (many seconds): asked once, then kept,
    keyed by the installed vLLM so that an upgrade asks again."""
    import sys

    from server_launch import capabilities as cap

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    calls: list[list[str]] = []
    monkeypatch.setattr(cap, "_ask_help", lambda argv: calls.append(argv) or "--x")
    prefix = (sys.executable, "-m", "vllm.entrypoints.openai.api_server")
    cap.local_help_text.cache_clear()
    assert cap.local_help_text(prefix) == "--x"
    cap.local_help_text.cache_clear()
    assert cap.local_help_text(prefix) == "--x"
    assert len(calls) == 1
    (cached,) = (tmp_path / "specload").iterdir()
    assert cached.read_text() == "--x"
    # another interpreter's vLLM is unknown: never cached
    assert cap._cache_path(["/usr/bin/python3", "-m", "x"]) is None
