"""The report of capacity searches (loadgen/report/capacity.py): the first table is capacity
per configuration with its interval and the gain over the baseline, the headline sentence,
and the figure; the gain's bounds for every kind of answer."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path

import pytest

from loadgen.engine.capacity import CapacityRun
from loadgen.report.capacity import capacity_section, gain
from loadgen.report.load import find_runs
from loadgen.report.render import write_report
from loadgen.results.capacity import Capacity, CapacityKind
from tests.test_capacity_search import FakeHost, _ctx

KIND = CapacityKind


def _cap(kind: CapacityKind, value=None, low=None, high=None) -> Capacity:
    return Capacity(kind, value, low, high, "req/s")


@pytest.mark.parametrize(
    ("config", "base", "text", "low", "high"),
    [
        (_cap(KIND.ESTIMATE, 14, 13, 15), _cap(KIND.ESTIMATE, 10, 9, 11), "1.40x (1.18-1.67)",
         13 / 11, 15 / 9),
        (_cap(KIND.AT_LEAST, 64, 64), _cap(KIND.ESTIMATE, 10, 9, 11), "at least 6.40x",
         64 / 11, math.inf),
        (_cap(KIND.ESTIMATE, 4, 4, 5), _cap(KIND.BELOW, high=2), "more than 2.00x", 2, math.inf),
        (_cap(KIND.BELOW, high=2), _cap(KIND.ESTIMATE, 10, 9, 11), "less than 0.20x", 0, 2 / 9),
        (_cap(KIND.ESTIMATE, 8, None, 9), _cap(KIND.AT_LEAST, 16, 16), "at most 0.50x", 0,
         9 / 16),
        (_cap(KIND.AT_LEAST, 8, 8), _cap(KIND.AT_LEAST, 8, 8), "can't tell (both at least)", 0,
         math.inf),
        (_cap(KIND.UNKNOWN), _cap(KIND.ESTIMATE, 1, 1, 2), "n/a", 0, math.inf),
    ],
)  # fmt: skip
def test_gain_from_the_two_intervals(
    config: Capacity, base: Capacity, text: str, low: float, high: float
) -> None:
    g = gain(config, base)
    assert g.text == text
    assert g.low == pytest.approx(low) and g.high == pytest.approx(high)
    assert (g.value is not None) == text[0].isdigit()


def _search(
    root: Path, label: str, truth: float, spec: dict | None, alternation: dict | None = None
) -> None:
    """A finished capacity search on a simulated server, as a run directory the report reads
    (``alternation``: as a paired sweep's search writes it)."""
    ctx = _ctx(root, repeat_close=0)
    ctx.label = label
    host = FakeHost(ctx, truth=truth)
    search = CapacityRun(ctx)
    search.alternation = alternation
    assert asyncio.run(search.run(host))
    phases = {
        p.name: json.loads((p / "summary.json").read_text())
        for p in root.iterdir()
        if (p / "summary.json").is_file()
    }
    summary = {"complete": True, "scenario": "cap", "label": label, "phases": phases}
    (root / "summary.json").write_text(json.dumps(summary))
    run = {"label": label, "spec": spec, "scenario": ctx.scenario.model_dump(mode="json")}
    (root / "run.json").write_text(json.dumps(run))


def test_report_leads_with_capacity_per_configuration(tmp_path: Path) -> None:
    _search(tmp_path / "sweep" / "none" / "cap", "none", 10.0, None)
    _search(tmp_path / "sweep" / "draft-k3" / "cap", "draft-k3", 14.0,
            {"method": "draft_model", "num_speculative_tokens": 3})  # fmt: skip
    md_path = write_report([tmp_path / "sweep"])
    md = md_path.read_text()
    first_table = md.index("| config | capacity | interval | gain vs baseline |")
    assert first_table < md.index("## How to read this") and md.count("| config |") >= 2
    assert md.index("## Capacity at the SLO") < md.index("| config | ok/failed")

    section = capacity_section(find_runs([tmp_path / "sweep"]), "none")
    base, draft = section.rows
    assert base.label == "none" and base.gain is None
    c, b = draft.capacity, base.capacity
    assert abs(c.value - 14) <= 0.05 * 14 and abs(b.value - 10) <= 0.05 * 10
    assert draft.gain.value == pytest.approx(c.value / b.value)
    assert draft.headline == (
        f"draft-k3: {c.value / b.value:.2f}x the requests per second at p90 TTFT <= 500 ms "
        f"({draft.gain.low:.2f}-{draft.gain.high:.2f})"
    )
    assert f"**{draft.headline}**" in md
    row = next(line for line in md.splitlines() if line.startswith("| draft-k3 |"))
    assert f"| {draft.gain.text} |" in row and "the bracket is within the resolution" in row

    out = md_path.parent
    assert (out / "cap_capacity.png").stat().st_size > 10_000
    assert "data:image/png;base64," in (out / "report.html").read_text()
    assert "Capacity at the SLO" in (out / "report.html").read_text()
    rows = json.loads((out / "report.json").read_text())["capacity"]["rows"]
    assert [r["label"] for r in rows] == ["none", "draft-k3"]  # the baseline first
    assert {r["label"]: r["gain"] for r in rows}["draft-k3"] == pytest.approx(draft.gain.value)


def test_alternated_searches_of_two_groups_each_gain_over_their_own_baseline(
    tmp_path: Path,
) -> None:
    """A paired sweep with two candidates, one at a time (residents: 2): the baseline was
    searched beside each (labelled '<baseline>@<group>'), and each candidate's gain is over
    the baseline search it alternated with, not over the other group's."""
    sweep = tmp_path / "sweep"
    truths = {"c1": (10.0, 14.0), "c2": (12.0, 12.0)}  # the baseline measured 10, then 12
    for group, (base_truth, truth) in truths.items():
        cell = sweep / "paired" / group / "cap" / "capacity"
        for pos, (label, t) in enumerate((("none", base_truth), (group, truth)), start=1):
            alt = {"group": group, "baseline": "none", "servers": ["none", group], "position": pos}
            spec = None if label == "none" else {"method": "draft_model"}
            _search(cell / label, label, t, spec, alt)
        doc = {"scenario": "cap", "kind": "capacity", "pairing": "alternated", "group": group,
               "baseline": "none", "servers": ["none", group], "status": "done"}  # fmt: skip
        (cell / "search.json").write_text(json.dumps(doc))
    md = write_report([sweep]).read_text()
    rows = json.loads((sweep / "report" / "report.json").read_text())["capacity"]["rows"]
    assert [(r["label"], r["is_baseline"]) for r in rows] == [
        ("none@c1", True),
        ("c1", False),
        ("none@c2", True),
        ("c2", False),
    ]
    caps = {r["label"]: r["capacity"]["value"] for r in rows}
    gains = {r["label"]: r["gain"] for r in rows}
    assert gains["c1"] == pytest.approx(caps["c1"] / caps["none@c1"])
    assert gains["c2"] == pytest.approx(caps["c2"] / caps["none@c2"])  # ~1.0, not 12/10
    assert all(r["alternated"] for r in rows)
    assert "| alternated with c2 |" in md and "| alternated with none |" in md
