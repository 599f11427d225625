"""CLI behaviour not covered elsewhere: --skip-bad-lines on a prompt file."""

from __future__ import annotations

import json
from pathlib import Path

from loadgen.cli import main
from loadgen.mockserver import mock_process


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
