"""Bad input never shows a traceback: every malformed scenario, matrix, prompt file or flag
becomes exit code 2 and ONE stderr line naming the file (or flag) and the field.

Driven through the CLI entry points (``loadgen.cli.main``, ``server_launch.cli.main``) as a
user meets them. Property tests generate random YAML structures, wrong types, unknown keys
and out-of-range values; each test prints how many inputs it tried (``pytest -s``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loadgen import cli as loadgen_cli
from loadgen.config.prompts.jsonl_lines import read_jsonl
from loadgen.config.scenario import SLO, PromptSpec, Scenario
from loadgen.errors import SpecloadError
from loadgen.mock.process import start_mock_process, stop_mock_process
from server_launch import cli as launch_cli
from server_launch.matrix import ServerOptions
from tests.conftest import free_port

CLOSED_URL = f"http://127.0.0.1:{free_port()}"  # nothing listens: a valid file fails here
EXAMPLES = 150
HYP = settings(
    max_examples=EXAMPLES,
    derandomize=True,  # the same inputs every run: counts in docs/reliability.md stay true
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

VALID_SCENARIO: dict[str, Any] = {
    "name": "bad-input",
    "load": {"shape": "poisson", "rate": 2.0},
    "num_requests": 4,
    "prompts": {"source": "base_prompt", "base_prompt": "w1 w2"},
    "output_tokens": 4,
    "slo": {"ttft_ms": 100},
}
VALID_MATRIX: dict[str, Any] = {
    "name": "bad-input",
    "model": "some-model",
    "server": {"max_model_len": 512},
    "specs": [{"method": "none"}, {"method": "ngram", "num_speculative_tokens": 3}],
    "scenarios": [
        {
            "name": "s1",
            "load": {"shape": "concurrency", "concurrency": 1},
            "num_requests": 2,
            "prompts": {"source": "base_prompt"},
        }
    ],
}


# --- helpers --------------------------------------------------------------------------------


def _call(main: Callable[[list[str]], int], argv: list[str], capsys: Any) -> tuple[int, str]:
    """Run a CLI main; return (exit code, stderr). argparse errors exit via SystemExit."""
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = int(e.code) if e.code is not None else 0
    return rc, capsys.readouterr().err


def _one_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one stderr line, got {len(lines)}:\n{err}"
    return lines[0]


def run_loadgen(argv: list[str], capsys: Any) -> tuple[int, str]:
    return _call(loadgen_cli.main, argv, capsys)


def scenario_error(path: Path, capsys: Any, *extra: str) -> str:
    """The one error line of ``python -m loadgen --scenario path``; asserts exit code 2."""
    rc, err = run_loadgen(
        ["--scenario", str(path), "--base-url", CLOSED_URL, "--no-progress", *extra], capsys
    )
    line = _one_line(err)
    assert rc == 2, (rc, line)
    return line


def matrix_result(path: Path, capsys: Any) -> tuple[int, str]:
    """``python -m server_launch --matrix path --dry-run``: prints the plan, starts nothing."""
    return _call(launch_cli.main, ["--matrix", str(path), "--dry-run"], capsys)


def _set(doc: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    out = json.loads(json.dumps(doc))
    cur = out
    *parents, last = dotted.split(".")
    for p in parents:
        cur = cur[p]
    cur[last] = value
    return out


def _write(path: Path, doc: Any) -> None:
    path.write_text(yaml.safe_dump(doc, allow_unicode=True))


class Counter:
    """How many generated inputs a property test fed the CLI (reported with -s)."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.n = 0

    def __call__(self) -> None:
        self.n += 1

    def report(self, capsys: Any) -> None:
        with capsys.disabled():
            print(f"\n[bad-input] {self.what}: {self.n} inputs tried")


# --- strategies -----------------------------------------------------------------------------

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(10**12), 10**12)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
)
yaml_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
# Letters that can't spell a number, a bool or inf/nan in pydantic's lax parsing.
_words = st.from_regex(r"[bcdghjkmpqsvwxz]{1,8}", fullmatch=True)
_containers = st.lists(st.integers(), min_size=1, max_size=3) | st.dictionaries(
    _words, st.integers(), min_size=1, max_size=2
)
_non_positive_int = st.integers(-(10**9), 0)
_non_positive_float = st.floats(max_value=0.0, allow_nan=False) | st.integers(-100, 0)
_negative_float = st.floats(max_value=-1e-9, allow_nan=False, allow_infinity=False)
_not_a_number = _words | _containers
_not_an_int = _words | _containers | st.floats(0.01, 0.99)


# field -> (the word the error must contain, invalid values)
SCENARIO_BAD_FIELDS: dict[str, tuple[str, st.SearchStrategy[Any]]] = {
    "num_requests": ("num_requests", _non_positive_int | _not_an_int),
    "load.rate": ("rate", _non_positive_float | _not_a_number | st.none()),
    "load.shape": ("load", _words | _containers),
    "load": ("load", _scalars.filter(lambda v: not isinstance(v, dict)) | st.lists(_scalars)),
    "output_tokens": ("output_tokens", _non_positive_int | _not_an_int),
    "warmup_requests": ("warmup_requests", st.integers(-(10**6), -1) | _not_an_int),
    "repeats": ("repeats", _non_positive_int | st.integers(101, 10**6) | _not_an_int),
    "request_timeout_s": ("request_timeout_s", _non_positive_float | _not_a_number),
    "max_error_rate": (
        "max_error_rate",
        _negative_float | st.floats(1.0001, 1e9) | _not_a_number,
    ),
    "temperature": ("temperature", _negative_float | _not_a_number),
    "top_p": ("top_p", _non_positive_float | st.floats(1.0001, 1e6) | _not_a_number),
    "endpoint": ("endpoint", _words | _containers | st.integers()),
    "name": ("name", _containers | st.integers() | st.floats(allow_nan=False)),
    "prompts.input_tokens": ("input_tokens", _non_positive_int | _not_an_int),
    "prompts.source": ("source", _words | _containers),
    "prompts": ("prompts", _words | st.lists(_scalars, min_size=1) | st.integers()),
    "slo.ttft_ms": ("ttft_ms", _non_positive_float | _not_a_number),
    "slo": ("slo", _words | st.lists(_scalars, min_size=1) | st.integers()),
    "seed": ("seed", _not_an_int),
    "sweep": ("sweep", _words | st.lists(_scalars, min_size=1) | st.integers()),
    "extra_body": ("extra_body", _words | st.lists(_scalars, min_size=1) | st.integers()),
}


@pytest.fixture
def scen_path(tmp_path: Path) -> Path:
    return tmp_path / "scen.yaml"


# --- scenario files: property tests -----------------------------------------------------------


def test_valid_scenario_fails_only_at_the_server(scen_path: Path, capsys: Any) -> None:
    """The base of every mutation below is valid: its only error is the closed port."""
    _write(scen_path, VALID_SCENARIO)
    line = scenario_error(scen_path, capsys)
    assert "--base-url" in line and "cannot reach" in line


def test_random_yaml_structures(scen_path: Path, capsys: Any) -> None:
    """Any YAML document at all: either a one-line error naming the file, or (valid) the
    closed port's one-line error."""
    keys = st.sampled_from([*sorted(VALID_SCENARIO), "sweep", "repeats", "seed"]) | st.text(
        max_size=10
    )
    docs = (
        yaml_values
        | st.dictionaries(keys, yaml_values, max_size=6)
        | st.builds(
            lambda extra: {**VALID_SCENARIO, **extra},
            st.dictionaries(keys, yaml_values, max_size=3),
        )
    )
    count = Counter("scenario: random YAML documents")

    @HYP
    @given(doc=docs)
    def check(doc: Any) -> None:
        count()
        _write(scen_path, doc)
        line = scenario_error(scen_path, capsys)
        assert scen_path.name in line or ("--base-url" in line and "cannot reach" in line), line

    check()
    count.report(capsys)
    assert count.n >= EXAMPLES // 2


def test_random_text_files(scen_path: Path, capsys: Any) -> None:
    """Arbitrary bytes and YAML-looking text: malformed YAML, bad tags, binary, deep nesting."""
    pieces = (
        ": ", "- ", "[", "]", "{", "}", "&a ", "*a ", "!!int ", "!!timestamp ", "!!binary ",
        "!!python/object:os.system ", "\t", "\n", "  ", "'", '"', "%YAML 1.1\n", "---\n",
        "? ", "|", ">", "#", "load", "rate", "1e9", ".nan", "\x00", "\x85", "\ufeff",
    )  # fmt: skip
    yamlish = st.lists(st.sampled_from(pieces) | st.text(max_size=5), max_size=30).map("".join)
    count = Counter("scenario: random text/bytes files")

    @HYP
    @given(content=yamlish.map(str.encode) | st.binary(max_size=64))
    def check(content: bytes) -> None:
        count()
        scen_path.write_bytes(content)
        line = scenario_error(scen_path, capsys)
        assert scen_path.name in line or "--base-url" in line, line

    check()
    count.report(capsys)
    assert count.n >= EXAMPLES // 2


def test_wrong_types_and_out_of_range(scen_path: Path, capsys: Any) -> None:
    """One field of a valid scenario made invalid: the line names the file and the field."""
    count = Counter("scenario: wrong types / out-of-range values")

    @HYP
    @given(data=st.data(), field=st.sampled_from(sorted(SCENARIO_BAD_FIELDS)))
    def check(data: st.DataObject, field: str) -> None:
        word, values = SCENARIO_BAD_FIELDS[field]
        value = data.draw(values, label=field)
        count()
        _write(scen_path, _set(VALID_SCENARIO, field, value))
        line = scenario_error(scen_path, capsys)
        assert scen_path.name in line, line
        assert word in line, line

    check()
    count.report(capsys)
    assert count.n >= EXAMPLES // 2


def test_unknown_keys(scen_path: Path, capsys: Any) -> None:
    """Unknown keys anywhere (top level, load, prompts, slo) are errors naming the key."""
    known = {"shape", "rate", "max_concurrency", "source", "base_prompt"}
    count = Counter("scenario: unknown keys")

    @HYP
    @given(
        where=st.sampled_from(["", "load.", "prompts.", "slo."]),
        key=st.from_regex(r"[a-z][a-z_]{0,14}", fullmatch=True),
        value=yaml_values,
    )
    def check(where: str, key: str, value: Any) -> None:
        section = where.rstrip(".")
        model_fields = {
            "": Scenario.model_fields,
            "load": known,
            "prompts": PromptSpec.model_fields,
            "slo": SLO.model_fields,
        }[section]
        if key in model_fields or key in known:
            return
        count()
        _write(scen_path, _set(VALID_SCENARIO, where + key, value))
        line = scenario_error(scen_path, capsys)
        assert scen_path.name in line and key in line and "unknown field" in line, line

    check()
    count.report(capsys)
    assert count.n >= EXAMPLES // 2


# --- scenario files and flags: named cases ----------------------------------------------------


@pytest.mark.parametrize(
    ("content", "expect"),
    [
        ("load: {shape: poisson, rate: 1\nnum_requests: 2\n", "line 2"),  # unclosed flow
        ("a: b\n\tc: d\n", "malformed YAML"),
        ("x: !!timestamp junk\n", "malformed YAML"),  # PyYAML raised AttributeError
        ("x: !!int abc\n", "malformed YAML"),  # PyYAML raised ValueError
        ("[" * 3000 + "]" * 3000, "nested too deeply"),  # RecursionError
        ("a: \x01\n", "malformed YAML"),  # ReaderError printed on two lines
        ("- 1\n- 2\n", "expected a mapping"),
        ("", "expected a mapping"),
        ("load: {shape: poisson, rate: -3}\nnum_requests: 2\n", "load.poisson.rate"),
        ("load: {shape: poisson, rate: 1}\nnum_requests: 2\nbogus: 1\n", "field 'bogus'"),
        ("load: {shape: poisson, rate: 1}\n", "set num_requests or duration_s"),
        ("load: {shape: zigzag}\nnum_requests: 2\n", "field 'load'"),
        ("load: {shape: poisson, rate: 1}\nnum_requests: 2\nsweep: {rate: [1, -2]}\n", "rate"),
        ("load: {shape: poisson, rate: 1}\nnum_requests: 2\nsweep: {size: [1]}\n", "sweep.size"),
        ('load: {shape: poisson, rate: 1}\nnum_requests: 2\n"a\\nb": 1\n', "unknown field"),
    ],
)
def test_named_bad_scenarios(scen_path: Path, capsys: Any, content: str, expect: str) -> None:
    scen_path.write_text(content)
    line = scenario_error(scen_path, capsys)
    assert scen_path.name in line and expect in line, line


def test_binary_scenario_file(scen_path: Path, capsys: Any) -> None:
    scen_path.write_bytes(b"\xff\xfe\x00load")
    line = scenario_error(scen_path, capsys)
    assert scen_path.name in line and "UTF-8" in line


def test_unknown_scenario_name(capsys: Any) -> None:
    rc, err = run_loadgen(["--scenario", "no-such-scenario", "--base-url", CLOSED_URL], capsys)
    line = _one_line(err)
    assert rc == 2 and "--scenario" in line and "unknown scenario 'no-such-scenario'" in line
    assert "smoke" in line  # lists the known ones


def test_missing_scenario_file(tmp_path: Path, capsys: Any) -> None:
    rc, err = run_loadgen(["--scenario", str(tmp_path / "nope.yaml")], capsys)
    line = _one_line(err)
    assert rc == 2 and "no such file" in line and "nope.yaml" in line


@pytest.mark.parametrize(
    ("flags", "expect"),
    [
        (["--rate", "-3"], "--rate: must be greater than 0, got -3"),
        (["--rate", "0"], "--rate: must be greater than 0, got 0"),
        (["--rate", "fast"], "--rate"),
        (["--concurrency", "0"], "--concurrency: must be greater than 0, got 0"),
        (["--concurrency", "two"], "--concurrency"),
        (["--num-requests", "-1"], "--num-requests: must be greater than 0, got -1"),
        (["--duration", "-5"], "--duration: must be greater than 0, got -5"),
        (["--warmup", "-1"], "--warmup: must be greater than or equal to 0, got -1"),
        (["--output-tokens", "0"], "--output-tokens: must be greater than 0, got 0"),
        (["--max-error-rate", "1.5"], "--max-error-rate: must be less than or equal to 1"),
        (["--max-error-rate", "-0.1"], "--max-error-rate: must be greater than or equal to 0"),
        (["--rate", "inf"], "--rate: must be a finite number"),
        (["--duration", "inf"], "--duration: must be a finite number"),
        (["--seed", "-1"], "--seed: must be greater than or equal to 0"),
        (["--input-tokens", "0"], "--input-tokens: must be greater than 0, got 0"),
        (["--spin-ms", "51"], "--spin-ms: must be less than or equal to 50"),
        (["--endpoint", "grpc"], "--endpoint"),
        (["--api-key-env", "SPECLOAD_SURELY_UNSET_VAR"], "--api-key-env"),
        (["--bogus-flag"], "unrecognized arguments"),
    ],
)
def test_bad_flags(scen_path: Path, capsys: Any, flags: list[str], expect: str) -> None:
    _write(scen_path, VALID_SCENARIO)
    line = scenario_error(scen_path, capsys, *flags)
    assert expect in line, line


def test_no_scenario_flag(capsys: Any) -> None:
    rc, err = run_loadgen(["--base-url", CLOSED_URL], capsys)
    assert rc == 2 and "--scenario" in _one_line(err)


# --- against the mock server: wrong model, prompt JSONL -------------------------------------


@pytest.fixture(scope="module")
def mock_url() -> Iterator[str]:
    proc, url = start_mock_process(["--model", "mock-model"])
    try:
        yield url
    finally:
        stop_mock_process(proc)


def test_wrong_model_name(scen_path: Path, capsys: Any, mock_url: str, tmp_path: Path) -> None:
    _write(scen_path, VALID_SCENARIO)
    argv = ["--scenario", str(scen_path), "--base-url", mock_url, "--no-progress"]
    rc, err = run_loadgen([*argv, "--model", "gpt-17", "--output-dir", str(tmp_path / "o")], capsys)
    line = _one_line(err)
    assert rc == 2 and "--model" in line and "gpt-17" in line and "mock-model" in line
    # the same in the scenario file
    _write(scen_path, {**VALID_SCENARIO, "model": "gpt-17"})
    rc, err = run_loadgen([*argv, "--output-dir", str(tmp_path / "o2")], capsys)
    assert rc == 2 and "gpt-17" in _one_line(err)


GOOD_LINES = [
    '{"prompt": "w1 w2 w3"}',
    '{"text": "w4 w5", "output_tokens": 3}',
    '{"prompt": "w6", "max_tokens": 2}',
]
BAD_LINES = [
    "{not json",
    "[1, 2]",
    '"a string"',
    '{"prompt": ""}',
    '{"prompt": "   "}',
    '{"text": 5}',
    '{"other": "x"}',
    '{"prompt": "w1", "output_tokens": -1}',
    '{"prompt": "w1", "output_tokens": 0}',
    '{"prompt": "w1", "output_tokens": true}',
    '{"prompt": "w1", "output_tokens": 2.5}',
    "null",
]


def test_prompt_jsonl_bad_lines_property(tmp_path: Path, capsys: Any) -> None:
    """Random mixes of good, bad and blank lines: the first bad line's number is reported;
    with skip_bad_lines every good line is kept and every bad one counted."""
    path = tmp_path / "p.jsonl"
    line_kinds = st.sampled_from(["good", "bad", "blank"])
    count = Counter("prompt JSONL: files with good/bad/blank lines")

    @HYP
    @given(data=st.data(), kinds=st.lists(line_kinds, min_size=1, max_size=12))
    def check(data: st.DataObject, kinds: list[str]) -> None:
        count()
        lines = [
            data.draw(st.sampled_from(GOOD_LINES if k == "good" else BAD_LINES))
            if k != "blank"
            else " "
            for k in kinds
        ]
        path.write_text("\n".join(lines) + "\n")
        bad_at = [i + 1 for i, k in enumerate(kinds) if k == "bad"]
        if bad_at:
            with pytest.raises(SpecloadError) as e:
                read_jsonl(path, skip_bad_lines=False)
            msg = str(e.value)
            assert msg.startswith(f"{path}:{bad_at[0]}: ") and "\n" not in msg, msg
            assert "skip_bad_lines" in msg
        items, skipped = read_jsonl(path, skip_bad_lines=True)
        assert len(items) == kinds.count("good")
        assert skipped == len(bad_at)

    check()
    count.report(capsys)
    assert count.n >= EXAMPLES // 2


def test_prompt_jsonl_through_cli(tmp_path: Path, capsys: Any, mock_url: str) -> None:
    """A bad line stops the run before anything is sent; skip_bad_lines runs and records
    how many lines it skipped."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join([GOOD_LINES[0], GOOD_LINES[1], "{oops", GOOD_LINES[2]]) + "\n")
    scen = tmp_path / "scen.yaml"
    doc = {**VALID_SCENARIO, "prompts": {"source": "jsonl", "path": str(prompts)}}
    doc["load"] = {"shape": "concurrency", "concurrency": 2}
    _write(scen, doc)
    base = ["--scenario", str(scen), "--base-url", mock_url, "--no-progress"]
    rc, err = run_loadgen([*base, "--output-dir", str(tmp_path / "o1")], capsys)
    line = _one_line(err)
    assert rc == 2 and "prompts.jsonl:3:" in line and "skip_bad_lines" in line
    assert not (tmp_path / "o1" / "run.json").exists()

    doc["prompts"]["skip_bad_lines"] = True
    _write(scen, doc)
    rc, err = run_loadgen([*base, "--output-dir", str(tmp_path / "o2")], capsys)
    assert rc == 0, err
    run = json.loads((tmp_path / "o2" / "run.json").read_text())
    assert run["prompts"]["skipped_bad_lines"] == 1
    summary = json.loads((tmp_path / "o2" / "summary.json").read_text())
    (phase,) = summary["phases"].values()
    assert phase["completed"] == 4 and phase["failed"] == 0


# --- matrix files ------------------------------------------------------------------------------


@pytest.fixture
def matrix_path(tmp_path: Path) -> Path:
    return tmp_path / "matrix.yaml"


def test_valid_matrix_dry_run(matrix_path: Path, capsys: Any) -> None:
    _write(matrix_path, VALID_MATRIX)
    rc, err = matrix_result(matrix_path, capsys)
    assert rc == 0 and err == ""


def _matrix_ok_or_one_line(path: Path, capsys: Any) -> str | None:
    rc, err = matrix_result(path, capsys)
    if rc == 0:
        assert "Traceback" not in err
        return None
    line = _one_line(err)
    assert rc == 2, (rc, line)
    assert path.name in line or line.startswith("server_launch: error: --"), line
    return line


_NO_MODEL_WRITES = {"dummy_models", "model_dir"}  # never make model directories in a test


def test_random_matrix_structures(matrix_path: Path, capsys: Any) -> None:
    top = [*sorted(VALID_MATRIX), "description", "backend", "image", "overrides", "output_csv"]
    original = ["num_requests_list", "batch_size_list", "speculative_models", "target_model_name"]
    keys = st.sampled_from(top + original) | st.text(max_size=10)
    docs = (
        yaml_values
        | st.dictionaries(keys, yaml_values, max_size=6)
        | st.builds(
            lambda extra: {**VALID_MATRIX, **extra}, st.dictionaries(keys, yaml_values, max_size=3)
        )
    )
    count = Counter("matrix: random YAML documents")

    @HYP
    @given(doc=docs)
    def check(doc: Any) -> None:
        if isinstance(doc, dict) and _NO_MODEL_WRITES & doc.keys():
            return
        count()
        _write(matrix_path, doc)
        _matrix_ok_or_one_line(matrix_path, capsys)

    check()
    count.report(capsys)
    assert count.n >= EXAMPLES // 2


MATRIX_BAD_FIELDS: dict[str, tuple[str, st.SearchStrategy[Any]]] = {
    "server.max_model_len": ("max_model_len", _non_positive_int | _not_an_int),
    "server.gpu_memory_utilization": (
        "gpu_memory_utilization",
        _non_positive_float | st.floats(1.0001, 1e6) | _not_a_number,
    ),
    "server.max_num_seqs": ("max_num_seqs", _non_positive_int | _not_an_int),
    "server.extra_args": ("extra_args", _words | st.integers()),
    "server.env": ("env", _words | st.lists(st.integers(), min_size=1)),
    "server": ("server", _words | st.lists(st.integers(), min_size=1) | st.integers()),
    "specs": ("specs", _words | st.integers() | st.just([]) | st.dictionaries(_words, _words)),
    "scenarios": ("scenarios", _words.map(lambda w: w + "x" * 3) | st.integers() | st.just([])),
    "overrides": ("overrides", st.lists(st.integers(), min_size=1) | st.integers() | _words),
    "overrides.num_requests": ("num_requests", _non_positive_int | _not_an_int),
    "model": ("model", st.lists(st.integers(), min_size=1)),
    "backend": ("backend", _words),
}


def test_matrix_wrong_types_and_out_of_range(matrix_path: Path, capsys: Any) -> None:
    count = Counter("matrix: wrong types / out-of-range values")

    @HYP
    @given(data=st.data(), field=st.sampled_from(sorted(MATRIX_BAD_FIELDS)))
    def check(data: st.DataObject, field: str) -> None:
        word, values = MATRIX_BAD_FIELDS[field]
        doc = (
            VALID_MATRIX if field != "overrides.num_requests" else {**VALID_MATRIX, "overrides": {}}
        )
        value = data.draw(values, label=field)
        count()
        _write(matrix_path, _set(doc, field, value))
        line = _matrix_ok_or_one_line(matrix_path, capsys)
        assert line is not None, f"{field}={value!r} was accepted"
        assert matrix_path.name in line and word in line, line

    check()
    count.report(capsys)
    assert count.n >= EXAMPLES // 2


def test_matrix_unknown_keys(matrix_path: Path, capsys: Any) -> None:
    count = Counter("matrix: unknown keys")
    allowed_top = set(VALID_MATRIX) | {
        "description", "backend", "image", "overrides", "output_csv", "dummy_models",
        "model_dir", "num_requests_list", "batch_size_list", "speculative_models",
        "target_model_name",
    }  # fmt: skip
    server_fields = ServerOptions.model_fields

    @HYP
    @given(
        where=st.sampled_from(["", "server."]),
        key=st.from_regex(r"[a-z][a-z_]{0,14}", fullmatch=True),
    )
    def check(where: str, key: str) -> None:
        if key in (allowed_top if not where else server_fields):
            return
        count()
        _write(matrix_path, _set(VALID_MATRIX, where + key, 1))
        line = _matrix_ok_or_one_line(matrix_path, capsys)
        assert line is not None and matrix_path.name in line and key in line, line

    check()
    count.report(capsys)
    assert count.n >= EXAMPLES // 2


@pytest.mark.parametrize(
    ("content", "expect"),
    [
        (b"\xff\xfe\x00", "UTF-8"),
        (b"x: !!timestamp junk\n", "malformed YAML"),
        (b"[" * 3000 + b"]" * 3000, "nested too deeply"),
        (b"a: [1\n", "malformed YAML"),
        (b"a: \x01\n", "malformed YAML"),
        (b"- 1\n", "expected a mapping"),
    ],
)
def test_named_bad_matrix_files(
    matrix_path: Path, capsys: Any, content: bytes, expect: str
) -> None:
    matrix_path.write_bytes(content)
    line = _matrix_ok_or_one_line(matrix_path, capsys)
    assert line is not None and expect in line, line


def test_missing_matrix_file(tmp_path: Path, capsys: Any) -> None:
    line = _matrix_ok_or_one_line(tmp_path / "nope.yaml", capsys)
    assert line is not None and "nope.yaml" in line and "cannot read" in line


def test_bad_scenario_inside_matrix(matrix_path: Path, capsys: Any) -> None:
    doc = _set(VALID_MATRIX, "scenarios", [{"name": "s1", "load": {"shape": "poisson"}}])
    _write(matrix_path, doc)
    line = _matrix_ok_or_one_line(matrix_path, capsys)
    assert line is not None and "scenarios[0]" in line and matrix_path.name in line
