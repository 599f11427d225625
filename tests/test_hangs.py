"""Nothing hangs and nothing blows up: a stalled stream frees its slot after the idle
limit, Ctrl-C stops every stage within a second, and input that would expand without
bound (YAML aliases) is refused when read."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from loadgen.cli import main as loadgen_main
from loadgen.config.scenario import parse_scenario, read_yaml
from loadgen.engine.run import run_scenario
from loadgen.errors import SpecloadError
from loadgen.results.files import read_records
from tests.canned import canned_in_thread, openai_routes, response
from tests.conftest import REPO


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


@pytest.mark.parametrize("signals", [1, 3])
def test_ctrl_c_while_prompts_are_prepared_stops_at_once(tmp_path: Path, signals: int) -> None:
    """The server's /tokenize takes 30 s: the interrupt must not wait for it (it did, for
    the whole preparation), and a third Ctrl-C must not give a traceback."""
    doc = {"name": "prep", "load": {"shape": "concurrency", "concurrency": 2},
           "num_requests": 4, "prompts": {"source": "base_prompt", "base_prompt": "w1 w2"},
           "output_tokens": 1}  # fmt: skip
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(doc))
    slow = [30.0, response(200, b'{"tokens": [1, 2]}')]
    with canned_in_thread(openai_routes([], **{"/tokenize": slow})) as srv:
        p = subprocess.Popen(
            [sys.executable, "-m", "loadgen", "--no-progress", "--base-url", srv.url,
             "--scenario", str(tmp_path / "s.yaml"), "--output-dir", str(tmp_path / "o")],
            stderr=subprocess.PIPE, text=True, cwd=REPO,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while not any(r.path == "/tokenize" for r in srv.requests):
            assert time.monotonic() < deadline and p.poll() is None
            time.sleep(0.05)
        t0 = time.monotonic()
        for _ in range(signals):
            p.send_signal(signal.SIGINT)
            time.sleep(0.1)
        rc = p.wait(20)
        took = time.monotonic() - t0
    err = p.stderr.read() if p.stderr else ""
    assert rc == 130 and took < 5, (took, err)  # within a second or so, not 30 s
    assert "Traceback" not in err and err.strip() == "loadgen: interrupted"
    assert not (tmp_path / "o").exists()  # nothing was started


BOMB = """
name: bomb
load: {shape: concurrency, concurrency: 1}
num_requests: 1
extra_body:
  a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
  b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
  c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
  d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
  e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
  f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
  g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
  h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
  i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]
"""


@pytest.mark.parametrize(
    ("text", "why"),
    [
        (BOMB, "aliases expand to more than 32 MiB"),
        ("name: r\nload: {shape: concurrency, concurrency: 1}\nnum_requests: 1\n"
         "extra_body: &x {a: [*x]}\n", "a recursive alias"),
    ],
    ids=["billion laughs", "recursive alias"],
)  # fmt: skip
def test_alias_bombs_are_refused_when_read(
    tmp_path: Path, capsys: Any, text: str, why: str
) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(text)
    t0 = time.monotonic()
    with pytest.raises(SpecloadError, match=why):
        read_yaml(path)
    assert time.monotonic() - t0 < 5  # measured without expanding it
    code = loadgen_main(["--scenario", str(path), "--output-dir", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and why in err


def test_aliases_that_stay_small_are_fine(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text(
        "name: ok\nload: {shape: concurrency, concurrency: 1}\nnum_requests: 1\n"
        "slo: &s {ttft_ms: 100}\nextra_body: {a: *s, b: *s}\n"
    )
    doc = read_yaml(path)
    assert parse_scenario(doc, str(path)).extra_body == {
        "a": {"ttft_ms": 100},
        "b": {"ttft_ms": 100},
    }
