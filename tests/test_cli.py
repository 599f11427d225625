"""CLI behaviour not covered elsewhere: --skip-bad-lines on a prompt file, --spin-ms, how
flags become scenario overrides."""

from __future__ import annotations

import json
from pathlib import Path

from loadgen.cli import build_parser, load_scenario_from_args, main
from loadgen.mock.process import mock_process


def _scenario(tmp_path: Path) -> Path:
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "w1 w2"}\nnot json\n{"prompt": "w3 w4"}\n')
    sc = tmp_path / "s.yaml"
    sc.write_text(
        json.dumps(
            {
                "load": {"shape": "concurrency", "concurrency": 1},
                "num_requests": 3,
                "prompts": {"source": "jsonl", "path": str(prompts)},
                "output_tokens": 4,
            }
        )
    )
    return sc


def test_bad_prompt_line_names_the_line(tmp_path: Path, capsys) -> None:
    with mock_process(["--ttft-ms", "1"]) as url:
        code = main(["--scenario", str(_scenario(tmp_path)), "--base-url", url,
                     "--output-dir", str(tmp_path / "r"), "--no-progress"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "p.jsonl:2" in err[0]


def test_skip_bad_lines_flag(tmp_path: Path) -> None:
    with mock_process(["--ttft-ms", "1"]) as url:
        code = main(["--scenario", str(_scenario(tmp_path)), "--base-url", url,
                     "--output-dir", str(tmp_path / "r"), "--no-progress",
                     "--skip-bad-lines"])  # fmt: skip
    assert code == 0
    run = json.loads((tmp_path / "r" / "run.json").read_text())
    assert run["prompts"]["skipped_bad_lines"] == 1
    assert run["scenario"]["prompts"]["skip_bad_lines"] is True


def test_spin_ms_reaches_the_run_and_never_sends_early(tmp_path: Path) -> None:
    """--spin-ms: the last stretch before each open-loop send yields to the loop instead of
    a timer; no request may leave before its scheduled time, in one process or in workers."""
    sc = tmp_path / "s.yaml"
    sc.write_text(
        json.dumps(
            {
                "load": {"shape": "poisson", "rate": 200},
                "num_requests": 60,
                "prompts": {"source": "base_prompt", "base_prompt": "w1 w2"},
                "output_tokens": 4,
            }
        )
    )
    with mock_process(["--ttft-ms", "1"]) as url:
        for workers in ("1", "2"):
            out = tmp_path / f"r{workers}"
            code = main(["--scenario", str(sc), "--base-url", url, "--output-dir", str(out),
                         "--no-progress", "--spin-ms", "3", "--workers", workers])  # fmt: skip
            assert code == 0
            run = json.loads((out / "run.json").read_text())
            assert run["scenario"]["spin_ms"] == 3.0
            (path,) = out.glob("*/requests.jsonl")
            recs = [json.loads(x) for x in path.read_text().splitlines()]
            assert len(recs) == 60 and all(r["error"] is None for r in recs)
            assert all(r["sent_s"] >= r["scheduled_s"] for r in recs)


def test_spin_ms_out_of_range_is_one_line_error(tmp_path: Path, capsys) -> None:
    code = main(["--scenario", str(_scenario(tmp_path)), "--spin-ms", "-1",
                 "--base-url", "http://127.0.0.1:9"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--spin-ms: must be greater than or equal to 0" in err[0]


def _overridden(tmp_path: Path, doc: dict, *flags: str):
    sc = tmp_path / "o.yaml"
    sc.write_text(json.dumps({"num_requests": 3, **doc}))
    return load_scenario_from_args(build_parser().parse_args(["--scenario", str(sc), *flags]))


def test_rate_and_concurrency_set_the_field_the_shape_names(tmp_path: Path) -> None:
    """--rate sets the shape's rate and replaces a sweep over it; --concurrency is the
    closed loop's concurrency (replacing its sweep) or an open shape's cap; --workers and
    the other flags are plain scenario overrides."""
    s = _overridden(tmp_path, {"load": {"shape": "gamma", "rate": 1, "burstiness": 0.5},
                               "sweep": {"rate": [1, 2]}},
                    "--rate", "4", "--concurrency", "3", "--workers", "2")  # fmt: skip
    assert (s.load.rate, s.load.max_concurrency, s.sweep, s.workers) == (4.0, 3, None, 2)
    s = _overridden(tmp_path, {"load": {"shape": "concurrency", "concurrency": 1},
                               "sweep": {"concurrency": [1, 4]}}, "--concurrency", "8")  # fmt: skip
    assert (s.load.concurrency, s.sweep, [p.name for p in s.phases()]) == (
        8, None, ["concurrency=8"])  # fmt: skip
    s = _overridden(tmp_path, {"load": {"shape": "poisson", "rate": 1}}, "--duration", "5")
    assert (s.num_requests, s.duration_s) == (None, 5.0)


def test_rate_on_a_shape_without_one_is_one_line(tmp_path: Path, capsys) -> None:
    sc = tmp_path / "b.yaml"
    sc.write_text(json.dumps({"load": {"shape": "burst", "size": 4, "interval_s": 1},
                              "num_requests": 4}))  # fmt: skip
    code = main(["--scenario", str(sc), "--rate", "2", "--base-url", "http://127.0.0.1:9"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [
        "loadgen: error: --rate: scenario load shape 'burst' has no rate; use a constant, "
        "gamma or poisson scenario"
    ]


def test_a_field_no_flag_set_is_reported_in_the_file(tmp_path: Path, capsys) -> None:
    sc = tmp_path / "bad.yaml"
    sc.write_text(json.dumps({"load": {"shape": "poisson", "rate": 1}, "num_requests": 2,
                              "workers": 0}))  # fmt: skip
    code = main(["--scenario", str(sc), "--rate", "2", "--base-url", "http://127.0.0.1:9"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert f"{sc}: field 'workers': Input should be greater than or equal to 1" in err[0]
