"""Prompt suites: each format parses a small fixture written here in its own layout (no
download, no hub), categories and rows reach the prompts, bad rows are one-line errors
naming the file and row (or skipped and counted), missing data says how to get it, and the
Hugging Face ``datasets`` path reads a local dataset directory."""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from loadgen.config.prompts.base import load_prompts
from loadgen.config.scenario import PromptSpec
from loadgen.errors import SpecloadError
from tests.conftest import run_loadgen

SPECBENCH = [
    {"question_id": 81, "category": "writing", "turns": ["Write a travel blog.", "Rewrite it."]},
    {"question_id": 101, "category": "math", "turns": ["What is 3+4?", "And times 2?"]},
    {"question_id": 201, "category": "translation", "turns": ["Translate 'bonjour'."]},
    {"question_id": 301, "category": "summarization", "turns": ["Summarise: a b c."]},
]
MT_BENCH_H4 = [  # HuggingFaceH4/mt_bench_prompts' layout: 'prompt' holds the turns
    {"prompt_id": 1, "category": "coding", "prompt": ["Write fizzbuzz.", "Now in C."]},
    {"prompt_id": 2, "category": "roleplay", "prompt": ["Be a pirate.", "Say hello."]},
]
HUMANEVAL = [
    {"task_id": "HumanEval/0", "prompt": "def add(a, b):\n", "entry_point": "add"},
    {"task_id": "HumanEval/1", "prompt": "def sub(a, b):\n", "entry_point": "sub"},
]
INSTRUCTCODER = [
    {"instruction": "Rename x to y.", "input": "x = 1\nprint(x)", "output": "y = 1"},
    {"instruction": "Add a docstring.", "input": "", "output": "..."},
]
SPEED_BENCH = [
    {
        "question_id": "q1",
        "category": "coding",
        "messages": [
            {"role": "user", "content": "Sort a list."},
            {"role": "assistant", "content": "sorted(x)"},
            {"role": "user", "content": "In place?"},
        ],
    },
    {"question_id": "q2", "category": "stem", "messages": [{"role": "user", "content": "Why?"}]},
]


def _jsonl(path: Path, rows: list[Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _load(n: int = 8, **spec: Any):
    return load_prompts(PromptSpec(**spec), n, seed=0, tokenizer=None)


def test_specbench_categories_turns_and_rows(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "question.jsonl", SPECBENCH)
    ps = _load(8, source="specbench", path=str(path))
    assert len(ps) == 8 and ps.distinct == 4
    by_text = {p.text: p for p in ps}
    writing = by_text["Write a travel blog."]
    assert writing.category == "writing"
    assert writing.turns == ("Write a travel blog.", "Rewrite it.")
    assert writing.row == "question.jsonl:1 (81)"
    assert by_text["Translate 'bonjour'."].turns == ()  # one turn: a plain prompt
    # the directory works too, and categories filter
    ps = _load(4, source="specbench", path=str(tmp_path), categories=["math", "translation"])
    assert {p.category for p in ps} == {"math", "translation"}
    with pytest.raises(SpecloadError, match=r"no row of specbench in poetry \(its categories"):
        _load(4, source="specbench", path=str(path), categories=["poetry"])


def test_mt_bench_both_layouts(tmp_path: Path) -> None:
    fastchat = _jsonl(tmp_path / "fc" / "question.jsonl", SPECBENCH[:2])
    h4 = _jsonl(tmp_path / "h4.jsonl", MT_BENCH_H4)
    a = _load(2, source="mt_bench", path=str(fastchat.parent))
    assert all(len(p.turns) == 2 for p in a)
    b = _load(2, source="mt_bench", path=str(h4))
    assert {(p.category, p.turns[1]) for p in b} == {
        ("coding", "Now in C."),
        ("roleplay", "Say hello."),
    }
    assert {p.row for p in b} == {"h4.jsonl:1 (1)", "h4.jsonl:2 (2)"}


def test_humaneval_gzip_and_json_list(tmp_path: Path) -> None:
    gz = tmp_path / "he" / "HumanEval.jsonl.gz"
    gz.parent.mkdir()
    gz.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in HUMANEVAL).encode()))
    ps = _load(2, source="humaneval", path=str(gz.parent))
    assert {p.text for p in ps} == {"def add(a, b):\n", "def sub(a, b):\n"}
    assert {p.category for p in ps} == {"humaneval"}
    assert {p.row for p in ps} == {
        "HumanEval.jsonl.gz:1 (HumanEval/0)",
        "HumanEval.jsonl.gz:2 (HumanEval/1)",
    }
    lst = tmp_path / "he.json"
    lst.write_text(json.dumps(HUMANEVAL))
    assert {p.row for p in _load(2, source="humaneval", path=str(lst))} == {
        "he.json:1 (HumanEval/0)",
        "he.json:2 (HumanEval/1)",
    }


def test_instructcoder_builds_vllms_prompt(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "ic.jsonl", INSTRUCTCODER)
    texts = sorted(p.text for p in _load(2, source="instructcoder", path=str(path)))
    suffix = " Just output the code, do not include any explanation."
    assert texts == sorted(
        ["x = 1\nprint(x)\n\nRename x to y." + suffix, "Add a docstring." + suffix]
    )


def test_speed_bench_subset_file_and_user_turns(tmp_path: Path) -> None:
    _jsonl(tmp_path / "speed" / "qualitative.jsonl", SPEED_BENCH)
    _jsonl(tmp_path / "speed" / "throughput_1k.jsonl", SPEED_BENCH[1:])
    ps = _load(2, source="speed_bench", path=str(tmp_path / "speed"))
    coding = next(p for p in ps if p.category == "coding")
    assert coding.turns == ("Sort a list.", "In place?")  # the assistant turn is not sent
    ps = _load(2, source="speed_bench", path=str(tmp_path / "speed"), subset="throughput_1k")
    assert {p.category for p in ps} == {"stem"}


def test_sharegpt_keeps_every_human_turn(tmp_path: Path) -> None:
    conv = [
        {"from": "human", "value": "hi"},
        {"from": "gpt", "value": "hello"},
        {"from": "human", "value": "how are you"},
        {"from": "gpt", "value": "fine"},
    ]
    path = tmp_path / "sg.json"
    path.write_text(json.dumps([{"id": "c1", "conversations": conv}]))
    (p,) = _load(1, source="sharegpt", path=str(path))
    assert p.turns == ("hi", "how are you") and p.row == "sg.json:1 (c1)"


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("{oops", "Expecting property name"),
        ('["a list"]', "expected a JSON object, got list"),
        ('{"category": "x"}', "needs 'turns'"),
        ('{"turns": []}', "'turns' must be a non-empty list of strings"),
        ('{"turns": ["ok", 3]}', "'turns'\\[1\\] must be a non-empty string"),
    ],
)
def test_bad_row_is_one_line_naming_file_and_row(tmp_path: Path, line: str, why: str) -> None:
    path = tmp_path / "question.jsonl"
    path.write_text(
        json.dumps(SPECBENCH[0]) + "\n\n" + line + "\n" + json.dumps(SPECBENCH[1]) + "\n"
    )
    with pytest.raises(SpecloadError, match=f"question.jsonl:3: {why}") as e:
        _load(2, source="specbench", path=str(path))
    assert "\n" not in str(e.value) and "skip_bad_lines" in str(e.value)
    ps = _load(2, source="specbench", path=str(path), skip_bad_lines=True)
    assert ps.skipped == 1 and ps.distinct == 2


def test_missing_data_says_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(
        SpecloadError,
        match=r"nope.jsonl not found: download it with `mkdir -p .* && wget -O .*nope.jsonl "
        r"https://\S+Spec-Bench\S+` \(expected file question.jsonl\)",
    ):
        _load(1, source="specbench", path=str(tmp_path / "nope.jsonl"))
    with pytest.raises(
        SpecloadError, match=r"no HumanEval.jsonl or HumanEval.jsonl.gz in .*download it with"
    ):
        _load(1, source="humaneval", path=str(tmp_path))
    with pytest.raises(
        ValidationError, match=r"prompts.path or prompts.dataset is required for source 'mt_bench'"
    ):
        PromptSpec(source="mt_bench")
    with pytest.raises(ValidationError, match="give one, not both"):
        PromptSpec(source="mt_bench", path="a", dataset="b")


def test_datasets_missing_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # import fails as when not installed
    with pytest.raises(
        SpecloadError,
        match=r"needs the Hugging Face 'datasets' package \(pip install 'specload\[datasets\]'\)",
    ):
        _load(1, source="mt_bench", dataset=str(tmp_path))


def test_datasets_local_directory(tmp_path: Path) -> None:
    """The ``datasets`` path on a local dataset directory: data files load_dataset reads,
    and a save_to_disk directory. Skipped where the optional extra is not installed."""
    datasets = pytest.importorskip("datasets")
    files = tmp_path / "mtb"
    _jsonl(files / "train.jsonl", SPECBENCH[:2])
    ps = _load(2, source="mt_bench", dataset=str(files))
    assert {p.category for p in ps} == {"writing", "math"}
    assert {p.row for p in ps} == {"mtb[train]:1 (81)", "mtb[train]:2 (101)"}
    saved = tmp_path / "he_saved"
    rows = _jsonl(tmp_path / "he.jsonl", HUMANEVAL)
    datasets.load_dataset("json", data_files={"test": str(rows)}).save_to_disk(str(saved))
    ps = _load(2, source="humaneval", dataset=str(saved))
    assert {p.text for p in ps} == {"def add(a, b):\n", "def sub(a, b):\n"}
    with pytest.raises(SpecloadError, match=r"prompts.dataset: cannot load .* split 'nope'"):
        _load(2, source="humaneval", dataset=str(saved), split="nope")


def test_bad_row_through_cli_exits_2_and_writes_nothing(tmp_path: Path, mock: Any) -> None:
    """What a user sees: one line naming file and row, exit 2, no results directory."""
    _, url = mock()
    path = tmp_path / "question.jsonl"
    path.write_text(json.dumps(SPECBENCH[0]) + '\n{"turns": 5}\n')
    scen = tmp_path / "s.yaml"
    scen.write_text(
        json.dumps(
            {
                "load": {"shape": "concurrency", "concurrency": 1},
                "num_requests": 2,
                "endpoint": "chat",
                "prompts": {"source": "specbench", "path": str(path)},
                "output_tokens": 4,
            }
        )
    )
    out = tmp_path / "out"
    p = run_loadgen(
        "--scenario", str(scen), "--base-url", url, "--output-dir", str(out), "--no-progress"
    )
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{path}:2: 'turns' must be a non-empty list" in lines[0]
    assert not out.exists()


@pytest.mark.parametrize(
    ("name", "expected", "rows"),
    [
        ("specbench", "data/spec_bench/question.jsonl", SPECBENCH),
        ("mt-bench", "data/mt_bench/question.jsonl", SPECBENCH[:2]),
        ("multi-turn", "data/mt_bench/question.jsonl", SPECBENCH[:2]),
        ("humaneval", "data/HumanEval.jsonl.gz", HUMANEVAL),
    ],
)
def test_shipped_suite_scenarios(
    name: str, expected: str, rows: list[Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each shipped suite scenario says how to get its data when it is absent (before any
    server is asked), and reads it once it is where the scenario looks."""
    from loadgen.config.prompts.base import check_prompts
    from loadgen.config.scenario import load_scenario

    monkeypatch.chdir(tmp_path)
    scenario = load_scenario(name)
    assert scenario.output_lengths == "natural" and scenario.endpoint == "chat"
    with pytest.raises(SpecloadError) as e:
        check_prompts(scenario.prompts)
    msg = str(e.value)
    assert f"{expected} not found: download it with `mkdir -p" in msg and "wget -O" in msg
    assert "\n" not in msg
    path = tmp_path / expected
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r) + "\n" for r in rows)
    path.write_bytes(gzip.compress(text.encode()) if path.suffix == ".gz" else text.encode())
    check_prompts(scenario.prompts)
    ps = load_prompts(scenario.prompts, 4, seed=0, tokenizer=None)
    assert len(ps) == 4 and all(p.category for p in ps)
    assert (scenario.multi_turn is not None) == (name == "multi-turn")


def test_copy_heavy_is_still_shipped() -> None:
    from loadgen.config.scenario import load_scenario

    assert load_scenario("copy-heavy").prompts.set == "copy-heavy"
