"""Matrix files -> server runs: native format, the original config.yaml, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from loadgen.errors import SpecloadError
from server_launch.matrix import ServerOptions, load_matrix, prepare_models

REPO = Path(__file__).resolve().parent.parent
SCEN = REPO / "scenarios"

INLINE = {
    "name": "s1",
    "load": {"shape": "concurrency", "concurrency": 1},
    "sweep": {"concurrency": [1, 2]},
    "num_requests": 4,
    "prompts": {"source": "random", "input_tokens": 16},
    "output_tokens": 8,
}


def _write(tmp_path: Path, doc: dict, name: str = "m.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(doc, sort_keys=False))
    return p


def test_server_options_flags() -> None:
    s = ServerOptions(
        model="m",
        max_model_len=512,
        gpu_memory_utilization=0.9,
        max_num_seqs=8,
        load_format="dummy",
        extra_args=["--enforce-eager"],
    )
    assert s.vllm_args() == [
        "--max-model-len", "512", "--gpu-memory-utilization", "0.9",
        "--max-num-seqs", "8", "--load-format", "dummy", "--enforce-eager",
    ]  # fmt: skip
    assert "m" not in s.vllm_args()  # the model is positional: the backend places it


def test_native_expands_specs_and_applies_overrides(tmp_path: Path) -> None:
    p = _write(
        tmp_path,
        {
            "model": "some/model",
            "server": {"max_model_len": 256},
            "specs": [
                {"method": "none"},
                {"method": "draft_model", "model": "org/d", "num_speculative_tokens": [1, 3]},
                {"method": "ngram", "num_speculative_tokens": 2, "scenarios": ["s2"]},
            ],
            "scenarios": [INLINE, {**INLINE, "name": "s2"}],
            "overrides": {"num_requests": 6, "prompts": {"input_tokens": 32}},
        },
    )
    m = load_matrix(p)
    assert m.name == "m" and m.source == str(p)
    assert [r.label for r in m.runs] == ["none", "draft_model-d-k1", "draft_model-d-k3", "ngram-k2"]
    assert [s.name for s in m.runs[0].scenarios] == ["s1", "s2"]
    assert [s.name for s in m.runs[3].scenarios] == ["s2"]
    s1 = m.runs[0].scenarios[0]
    assert s1.num_requests == 6
    assert s1.prompts.input_tokens == 32 and s1.prompts.source == "random"  # merged, not replaced
    assert m.runs[2].vllm_args()[:2] == ["--max-model-len", "256"]
    assert json.loads(m.runs[2].vllm_args()[-1])["num_speculative_tokens"] == 3
    assert m.dummy_models == {}


def test_scenario_by_name(tmp_path: Path) -> None:
    p = _write(tmp_path, {"model": "x", "specs": [{"method": "none"}], "scenarios": ["smoke"]})
    (run,) = load_matrix(p).runs
    assert run.scenarios[0].name == "smoke"


def test_dummy_models_map_names_to_dirs(tmp_path: Path) -> None:
    p = _write(
        tmp_path,
        {
            "model": "tiny-llama",
            "dummy_models": True,
            "model_dir": str(tmp_path / "models"),
            "specs": [
                {"method": "draft_model", "model": "tiny-llama-draft", "num_speculative_tokens": 2}
            ],
            "scenarios": [INLINE],
        },
    )
    m = load_matrix(p)
    (run,) = m.runs
    assert run.server.model == str(tmp_path / "models" / "tiny-llama")
    assert run.server.load_format == "dummy"
    assert run.server.served_model_name == "tiny-llama"
    assert run.spec.model == str(tmp_path / "models" / "tiny-llama-draft")
    assert run.label == "draft_model-tiny-llama-draft-k2"  # from the name, not the dir
    made = prepare_models(m)
    assert sorted(d.name for d in made) == ["tiny-llama", "tiny-llama-draft"]
    assert all((d / "config.json").is_file() for d in made)


@pytest.mark.parametrize(
    ("doc", "needle"),
    [
        ({"model": "x", "specs": [{"method": "none"}], "scenarios": [INLINE], "typo": 1},
         "field 'typo': unknown field"),
        ({"specs": [{"method": "none"}], "scenarios": [INLINE]}, "field 'model': required"),
        ({"model": "x", "specs": [], "scenarios": [INLINE]}, "field 'specs'"),
        ({"model": "x", "server": ["a"], "specs": [{"method": "none"}], "scenarios": [INLINE]},
         "field 'server': expected a mapping"),
        ({"model": "x", "specs": ["none"], "scenarios": [INLINE]},
         "field 'specs.0': expected a mapping"),
        ({"model": "x", "specs": [{"method": "none"}], "scenarios": [INLINE],
          "overrides": ["x"]}, "field 'overrides': expected a mapping"),
        ({"model": "x", "specs": [{"method": "none"}]}, "field 'scenarios'"),
        ({"model": "x", "server": {"max_model_len": -1}, "specs": [{"method": "none"}],
          "scenarios": [INLINE]}, "field 'server.max_model_len': Input should be greater than 0"),
        ({"model": "x", "server": {"gpu_mem": 0.5}, "specs": [{"method": "none"}],
          "scenarios": [INLINE]}, "field 'server.gpu_mem': unknown field"),
        ({"model": "x", "specs": [{"method": "ngram"}], "scenarios": [INLINE]},
         "specs[0]: num_speculative_tokens is required"),
        ({"model": "x", "specs": [{"method": "none"}, {"method": "none"}], "scenarios": [INLINE]},
         "duplicate run label 'none'"),
        ({"model": "x", "specs": [{"method": "none"}], "scenarios": [INLINE, INLINE]},
         "duplicate scenario name 's1'"),
        ({"model": "x", "specs": [{"method": "none", "scenarios": ["zz"]}], "scenarios": [INLINE]},
         "no scenario named 'zz'"),
        ({"model": "x", "specs": [{"method": "none"}],
          "scenarios": [{**INLINE, "output_tokens": 0}]}, "scenarios[0]: field 'output_tokens'"),
        ({"model": "x", "specs": [{"method": "none"}], "scenarios": [INLINE],
          "overrides": {"num_requests": -3}}, "field 'num_requests'"),
        ({"model": "not-a-known-model", "dummy_models": True, "specs": [{"method": "none"}],
          "scenarios": [INLINE]}, "field 'server.model': 'not-a-known-model' is not a known"),
    ],
)  # fmt: skip
def test_errors_name_file_and_field(tmp_path: Path, doc: dict, needle: str) -> None:
    p = _write(tmp_path, doc)
    with pytest.raises(SpecloadError) as e:
        load_matrix(p)
    msg = str(e.value)
    assert str(p) in msg and needle in msg and "\n" not in msg, msg


def test_malformed_yaml_and_missing_file(tmp_path: Path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text("model: [unclosed\n")
    with pytest.raises(SpecloadError, match="malformed YAML"):
        load_matrix(p)
    with pytest.raises(SpecloadError, match="cannot read"):
        load_matrix(tmp_path / "absent.yaml")


def test_original_config_loads_as_is() -> None:
    m = load_matrix(SCEN / "original-config.yaml")
    # 1 none + ngram x 4 k + 2 drafts x 4 k = 13 speculative configs, x 5 batch sizes
    assert len(m.runs) == 13 * 5
    assert m.output_csv == "vllm_benchmark_results.csv"
    labels = {r.label for r in m.runs}
    assert {"none-bs1", "ngram-k10-bs32", "draft_model-opt-125m-k3-bs8"} <= labels
    run = next(r for r in m.runs if r.label == "ngram-k3-bs8")
    assert run.server.model == "facebook/opt-1.3b"
    assert run.server.max_num_seqs == 8 and run.batch_size == 8
    assert run.server.gpu_memory_utilization == 0.9
    cfg = run.spec.speculative_config()
    assert cfg == {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_min": 1,
                   "prompt_lookup_max": 4}  # fmt: skip
    assert [s.name for s in run.scenarios] == ["n32", "n128", "n512"]
    s = run.scenarios[1]
    assert s.load.shape == "concurrency" and s.load.concurrency == 8
    assert s.num_requests == 128 and s.output_tokens == 128
    assert s.prompts.source == "base_prompt" and s.prompts.base_prompt == "The future of AI is"
    draft = next(r for r in m.runs if r.label == "draft_model-opt-350m-k5-bs4")
    assert draft.spec.model == "facebook/opt-350m"


def test_original_config_offline_with_dummy_models(tmp_path: Path) -> None:
    m = load_matrix(SCEN / "original-config.yaml", dummy_models=True, model_dir=str(tmp_path))
    assert sorted(m.dummy_models.values()) == ["opt-1.3b", "opt-125m", "opt-350m"]
    run = next(r for r in m.runs if r.label == "draft_model-opt-125m-k1-bs1")
    assert run.server.model == str(tmp_path / "opt-1.3b")
    assert run.server.served_model_name == "facebook/opt-1.3b"
    assert run.spec.model == str(tmp_path / "opt-125m")


def test_original_errors(tmp_path: Path) -> None:
    base = yaml.safe_load((SCEN / "original-config.yaml").read_text())
    for change, needle in [
        ({"batch_size_list": [1, 0]}, "field 'batch_size_list.1': Input should be greater than 0"),
        ({"num_speculative_tokens_list": None}, "field 'num_speculative_tokens_list': required"),
        ({"speculative_modelz": [None]}, "field 'speculative_modelz': unknown field"),
        (
            {"speculative_models": [3]},
            "field 'speculative_models.0': expected null, '[ngram]' or a model name",
        ),
        ({"ngram_prompt_lookup_min": 9}, "must be <="),
        ({"output_tokens": 0}, "field 'output_tokens'"),
        ({"synthetic_acceptance_rates": [0.5]}, "need 3 values"),
    ]:
        p = _write(tmp_path, {**base, **change}, "orig.yaml")
        with pytest.raises(SpecloadError) as e:
            load_matrix(p)
        assert needle in str(e.value) and str(p) in str(e.value), str(e.value)


def test_shipped_matrices_load() -> None:
    cpu = load_matrix(SCEN / "original-config-cpu.yaml")
    assert len(cpu.runs) == 3 * 2
    assert {r.spec.method for r in cpu.runs} == {"none", "ngram", "draft_model"}
    assert all(r.server.load_format == "dummy" for r in cpu.runs)
    assert [s.num_requests for s in cpu.runs[0].scenarios] == [4, 8]

    gpu = load_matrix(SCEN / "original-config-gpu.yaml")
    assert len(gpu.runs) == 4 * 2
    drafts = [r for r in gpu.runs if r.spec.method == "draft_model"]
    assert drafts and all(r.spec.rejection_sample_method == "synthetic" for r in drafts)
    assert all(r.spec.synthetic_acceptance_rates == [0.73, 0.52, 0.35] for r in drafts)
    ngram = [r for r in gpu.runs if r.spec.method == "ngram"]
    assert ngram and all(r.spec.rejection_sample_method is None for r in ngram)

    mc = load_matrix(SCEN / "matrix-cpu.yaml")
    assert [r.label for r in mc.runs] == ["none", "draft_model-tiny-llama-draft-k3", "ngram-k3"]

    g = load_matrix(SCEN / "matrix-gpu-8b.yaml")
    labels = [r.label for r in g.runs]
    assert labels == [  # most informative first: a lease cut short resumes the rest
        "none",
        "draft_model-llama-3.2-1b-k3-synth",
        "eagle3-k3-synth",
        "ngram-k3",
        "draft_model-llama-3.2-1b-k1-synth",
        "draft_model-llama-3.2-1b-k5-synth",
    ]
    k5 = g.runs[5].spec
    assert k5.synthetic_acceptance_rates == [0.73, 0.52, 0.35, 0.23, 0.15]
    assert g.runs[4].spec.synthetic_acceptance_rates == [0.73]
    assert g.runs[1].spec.synthetic_acceptance_rates == [0.73, 0.52, 0.35]
    assert {s.name for s in g.runs[0].scenarios} == {"random-256-128", "copy-heavy"}
    assert [s.name for s in g.runs[2].scenarios] == ["random-256-128"]
    phases = [p.load.concurrency for p in g.runs[0].scenarios[0].phases()]  # type: ignore[union-attr]
    assert phases == [1, 1, 1, 4, 4, 4, 16, 16, 16, 64, 64, 64]  # 3 repeats per level
    assert g.runs[0].scenarios[0].warmup_requests > 0
