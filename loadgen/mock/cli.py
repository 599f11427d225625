"""``python -m loadgen.mock``: flags -> :class:`MockConfig` -> a running server.

The flags mirror ``MockConfig`` fields one to one (``MockConfig.to_args`` is the
inverse). The server prints ``listening on <url>`` as its first stdout line, which is
how ``loadgen.mock.process`` learns the port it picked.

Several processes (``--reuse-port``): one asyncio process serves some tens of thousands
of chunks/s; to load-test a client with several processes of its own, start N mocks with
``--reuse-port`` on one port and the kernel spreads the connections over them (each keeps
its own ``/metrics`` and ``--log``, so give each its own log file).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from loadgen.errors import ArgParser, SpecloadError, run_cli
from loadgen.mock.config import MockConfig
from loadgen.mock.server import serve

PROG = "python -m loadgen.mock"


def build_arg_parser() -> ArgParser:
    """The CLI; flags mirror ``MockConfig`` fields one to one."""
    d = MockConfig()
    p = ArgParser(
        prog=PROG,
        description="Mock vLLM OpenAI-compatible streaming server with ground-truth timing.",
    )
    a = p.add_argument
    a("--host", default=d.host)
    a("--port", type=int, default=d.port, help="0 = pick a free port")
    a("--model", default=d.model, help="served model name")
    a("--max-model-len", type=int, default=d.max_model_len)
    a("--default-max-tokens", type=int, default=d.default_max_tokens)
    a("--ttft-ms", type=float, default=d.ttft_ms, help="admission -> first chunk")
    a("--itl-ms", type=float, default=d.itl_ms, help="delay between chunks")
    a(
        "--token-ms",
        type=float,
        default=d.token_ms,
        help="ms per output token on top (a chunk of k tokens waits k times this); with "
        "--max-num-seqs, a queue of known service time (loadgen/mock/queueing.py)",
    )
    a("--tokens-per-chunk", default=d.tokens_per_chunk, help="N | k1,k2,... | spec:K:P")
    a("--num-spec-tokens", type=int, default=None, help="K for spec-decode metrics")
    a("--jitter-ms", type=float, default=d.jitter_ms, help="uniform +- per chunk")
    a("--eos-prob", type=float, default=d.eos_prob, help="per-token stop unless ignore_eos")
    a("--seed", type=int, default=d.seed)
    a(
        "--max-num-seqs",
        type=int,
        default=d.max_num_seqs,
        help="slots; more requests wait, first come first served (0 = unlimited)",
    )
    a("--kv-capacity-tokens", type=int, default=d.kv_capacity_tokens)
    a("--fail-status", type=int, default=d.fail_status, help="500|429|503|400")
    a("--fail-rate", default=d.fail_rate, help="probability or every:N")
    a("--cut-rate", default=d.cut_rate, help="probability or every:N")
    a("--stall-rate", default=d.stall_rate, help="probability or every:N")
    a("--malformed-rate", default=d.malformed_rate, help="probability or every:N")
    a("--no-usage", action="store_true", help="never send usage")
    a("--empty", action="store_true", help="every response has 0 tokens")
    a("--log", default=None, help="ground-truth JSONL, one line per finished request")
    a("--log-flush-s", type=float, default=d.log_flush_s)
    a("--loop", default=d.loop, help="auto | asyncio | uvloop")
    a("--uvloop", dest="loop", action="store_const", const="uvloop", help="= --loop uvloop")
    a(
        "--reuse-port",
        action="store_true",
        help="SO_REUSEPORT: start several mocks on one --port; the kernel spreads connections",
    )
    a("--drift", default=d.drift, help="speed over time: linear:R and/or step:F@S")
    a("--drift-origin", type=float, default=None, help="time.time() of the drift's t=0")
    return p


def config_from_args(argv: Sequence[str] | None = None) -> MockConfig:
    ns = build_arg_parser().parse_args(argv)
    return MockConfig(**vars(ns))


def run(config: MockConfig) -> None:
    """Serve until SIGINT/SIGTERM, on uvloop when asked for (or, with ``auto``, when it
    is installed: it lets one process serve more chunks per second)."""
    if config.loop != "asyncio":
        try:
            import uvloop
        except ImportError:
            if config.loop == "uvloop":
                raise SpecloadError("--loop uvloop: uvloop is not installed") from None
        else:
            uvloop.run(serve(config))
            return
    asyncio.run(serve(config))


def _main(argv: list[str]) -> int:
    config = config_from_args(argv)
    try:
        run(config)
    except OSError as e:  # port in use, bad host
        raise SpecloadError(f"--host/--port: {e}") from None
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(PROG, _main, None if argv is None else list(argv))
