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
from tests.test_backends import fake_run

HELP_032 = "[--enable-per-request-metrics | --no-enable-per-request-metrics]\n" + (
    "[--per-request-spec-decode-metrics {detailed,none,summary}]\n"
)
HELP_OLD = "[--enable-prompt-tokens-details]\n[--disable-log-stats]\n"
SPEC = ["--per-request-spec-decode-metrics", "summary"]


def test_flags_follow_the_help_text() -> None:
    auto = PerRequestMetrics.AUTO
    assert per_request_flags(HELP_032, [], auto) == ["--enable-per-request-metrics", *SPEC]
    assert per_request_flags(HELP_OLD, [], auto) == []  # an older vLLM: nothing to add
    detailed = per_request_flags(HELP_032, [], PerRequestMetrics.DETAILED)
    assert detailed[-1] == "detailed"
    assert per_request_flags(HELP_032, [], PerRequestMetrics.OFF) == []
    assert per_request_flags(HELP_032, ["--disable-log-stats"], auto) == SPEC
    given = ["--per-request-spec-decode-metrics=detailed"]
    assert per_request_flags(HELP_032, given, auto) == ["--enable-per-request-metrics"]


def test_only_vllm_commands_are_asked() -> None:
    py = sys.executable
    assert help_argv([py, "-m", API_SERVER_MODULE]) == [py, "-m", API_SERVER_MODULE, "--help"]
    assert help_argv(["/opt/bin/vllm", "serve"]) == ["/opt/bin/vllm", "serve", "--help=all"]
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
