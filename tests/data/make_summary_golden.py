"""Write tests/data/summary_golden.json: summaries of tests/synthetic.py's records.

Run from the root of the checkout whose summary code is the reference (the golden file was
made at commit c767ba0, before summaries streamed chunks from disk), with this repo's
tests/synthetic.py copied there:

    cd OLD && python NEW/tests/data/make_summary_golden.py > NEW/tests/data/summary_golden.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path.cwd()))

from loadgen.results.summary import summarize
from tests.synthetic import (
    GOLDEN_KW,
    GOLDEN_N,
    GOLDEN_N_DETAILED,
    GOLDEN_SEED,
    canonical,
    digest,
    synthetic_records,
)


def main() -> None:
    recs = synthetic_records(GOLDEN_N, GOLDEN_SEED)
    flat = summarize(recs, detailed=False, **GOLDEN_KW)
    detailed = summarize(recs[:GOLDEN_N_DETAILED], detailed=True, **GOLDEN_KW)
    out = {
        "made_by": "tests/data/make_summary_golden.py",
        "n": GOLDEN_N,
        "seed": GOLDEN_SEED,
        "n_detailed": GOLDEN_N_DETAILED,
        "summary": json.loads(canonical(flat)),
        "detailed_sha256": digest(detailed),
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
