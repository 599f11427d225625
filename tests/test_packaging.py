"""The wheel: a non-editable install carries every package and the built-in scenarios.

Built offline (``--no-build-isolation``: the setuptools of this environment) from a copy of
the sources, so the checkout gets no build/ or egg-info.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "loadgen", "server_launch", "scenarios")


def _pip(*args: str, cwd: Path) -> None:
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    p = subprocess.run(
        [sys.executable, "-m", "pip", *args], cwd=cwd, env=env, capture_output=True, text=True
    )
    assert p.returncode == 0, p.stdout + p.stderr


def test_wheel_installs_with_the_builtin_scenarios(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, src / name)
    _pip("wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), ".", cwd=src)
    (wheel,) = tmp_path.glob("specload-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())

    yamls = sorted(ROOT.glob("scenarios/*.yaml"))
    assert yamls
    for y in yamls:
        assert f"loadgen/builtin_scenarios/{y.name}" in names, y.name
    for data in ROOT.glob("loadgen/data/*.jsonl"):
        assert f"loadgen/data/{data.name}" in names, data.name
    for init in [*ROOT.glob("loadgen/**/__init__.py"), *ROOT.glob("server_launch/**/__init__.py")]:
        # a package on disk but not in pyproject's list would be missing from the wheel
        assert init.relative_to(ROOT).as_posix() in names, init

    site = tmp_path / "site"
    _pip("install", "--no-deps", "-q", "--target", str(site), str(wheel), cwd=tmp_path)
    env = {**os.environ, "PYTHONPATH": str(site)}  # this copy, not the checkout
    code = "import loadgen, sys; print(loadgen.__file__); from loadgen.cli import main; main()"
    p = subprocess.run(
        [sys.executable, "-c", code, "--list-scenarios"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    origin, *listed = p.stdout.split()
    assert Path(origin).is_relative_to(site)
    expected = [y.stem for y in yamls if "load" in (yaml.safe_load(y.read_text()) or {})]
    assert listed == sorted(expected) and "smoke" in listed
