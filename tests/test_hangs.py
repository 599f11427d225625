"""Nothing hangs and nothing blows up: a stalled stream frees its slot after the idle
limit, Ctrl-C stops every stage within a second, and input that would expand without
bound (YAML aliases) is refused when read."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from loadgen.cli import main as loadgen_main
from loadgen.config.scenario import parse_scenario
from loadgen.engine.run import run_scenario
from loadgen.results.files import read_records


def test_stalled_streams_free_their_slot_after_the_idle_limit(tmp_path: Path, mock: Any) -> None:
    """The issue's run: a closed loop at concurrency 8 against a server that stalls some
    streams after a few chunks. With one timeout it held each stalled slot for the whole
    600 s deadline; now each stalled request fails after the idle limit."""
    _, url = mock("--stall-rate", "every:10", "--itl-ms", "1")
    sc = parse_scenario(
        {
            "name": "stalls",
            "load": {"shape": "concurrency", "concurrency": 8},
            "num_requests": 80,
            "prompts": {"source": "base_prompt", "base_prompt": "w1 w2 w3"},
            "output_tokens": 8,
            "request_timeout_s": 600,
            "idle_timeout_s": 0.5,
        },
        "test",
    )
    t0 = time.monotonic()
    res = run_scenario(sc, base_url=url, output_dir=tmp_path / "o", progress=False)
    assert res.exit_code == 0 and time.monotonic() - t0 < 60
    recs = list(read_records(tmp_path / "o" / "concurrency=8" / "requests.jsonl"))
    stalled = [r for r in recs if not r.ok]
    assert len(recs) == 80 and len(stalled) == 8
    assert all(r.error_kind == "timeout" and "(idle_timeout_s)" in (r.error or "") for r in stalled)
    assert all(0.45 <= (r.e2e_s or 0) < 5 for r in stalled)


def test_each_time_limit_is_a_flag(tmp_path: Path, capsys: Any) -> None:
    """The three limits reach the scenario from their flags, and a bad value is one line
    naming the flag."""
    for flag in ("--request-timeout", "--first-byte-timeout", "--idle-timeout"):
        code = loadgen_main(["--scenario", "smoke", flag, "0", "--output-dir", str(tmp_path)])
        err = capsys.readouterr().err.strip()
        assert code == 2 and err.startswith(f"loadgen: error: {flag}: ") and "\n" not in err
    from loadgen.cli import build_parser, load_scenario_from_args

    flags = ["--request-timeout", "90", "--first-byte-timeout", "60", "--idle-timeout", "5"]
    args = build_parser().parse_args(["--scenario", "smoke", *flags])
    sc = load_scenario_from_args(args)
    assert (sc.request_timeout_s, sc.first_byte_timeout_s, sc.idle_timeout_s) == (90, 60, 5)
    assert json.loads(sc.model_dump_json())["idle_timeout_s"] == 5
