"""What the load-generator benchmarks record about the machine, and how they write results.

Why one place: a benchmark's figures mean nothing without the box they came from, and each
script wrote the same description and the same JSON + Markdown pair by hand.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

from loadgen.engine.host import cpu_model


def machine() -> dict[str, Any]:
    """CPUs, platform, Python, httpx/uvloop versions and the load average right now."""
    import httpx

    try:
        import uvloop  # type: ignore[import-not-found]

        uv = uvloop.__version__
    except ImportError:
        uv = None
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": cpu_model(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "httpx": httpx.__version__,
        "uvloop": uv,
        "loadavg_at_start": list(os.getloadavg()),
    }


def write_results(out: Path, name: str, res: dict[str, Any], markdown: str) -> None:
    """``out/name.json`` (everything measured) and ``out/name.md`` (the table)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(res, indent=2) + "\n")
    (out / f"{name}.md").write_text(markdown)
    print(f"wrote {out / f'{name}.md'}", file=sys.stderr)
