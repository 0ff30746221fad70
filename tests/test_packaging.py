"""The README's commands are the ones CI runs, and the wheel carries what the package needs."""
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def readme_commands():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.findall(r"^```(?:bash|sh)\n(.*?)\n```", text, flags=re.S | re.M)


def test_ci_runs_the_readme_test_command():
    ci_lines = [l for l in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines() if l and not l.startswith("#")]
    ci_command = ci_lines[-1]
    assert "pytest" in ci_command
    assert ci_command in readme_commands(), "the last line of .ci/run must be the README's test command"


def test_readme_install_command_runs_the_main_job():
    assert any("pip install" in c and "gpumlp train" in c for c in readme_commands())


@pytest.mark.slow
def test_wheel_carries_the_cuda_sources_and_the_dataset(tmp_path):
    """Build the wheel from a clean copy of the repo (as pip would for a user) and look inside it.
    (Built in place, setuptools would reuse a build/ folder left by an earlier build, with stale files.)"""
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info",
                                                              "__pycache__", ".pytest_cache", ".benchmarks"))
    # pip fetches setuptools for the isolated build: a stalled download fails this test, not the run
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(src)],
                   check=True, capture_output=True, timeout=600)
    (wheel,) = tmp_path.glob("gpumlp-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    sources = sorted(p.name for p in (ROOT / "kernels").iterdir() if p.suffix in (".cu", ".cuh"))
    assert sources, "kernels/ holds no CUDA sources"
    for name in sources:
        assert f"gpumlp/kernels/{name}" in names
    data = sorted(p.name for p in (ROOT / "gpumlp" / "datasets").iterdir() if p.is_file())
    for name in data:
        assert f"gpumlp/datasets/{name}" in names
    assert not any(n.startswith("tests/") for n in names)
    # every module of the source tree, subpackages included (a package missing from pyproject's
    # list installs fine in editable mode and is absent from the wheel a user gets)
    modules = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "gpumlp").rglob("*.py"))
    assert "gpumlp/cli/__init__.py" in modules
    assert [m for m in modules if m not in names] == []


def test_readme_api_example_runs(tmp_path, monkeypatch):
    """The README's first Python example is a complete program: it must run as printed."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    example = re.findall(r"^```python\n(.*?)\n```", text, flags=re.S | re.M)[0]
    monkeypatch.chdir(tmp_path)  # it saves model.npz
    monkeypatch.setenv("GPUMLP_BACKEND", "numpy")
    exec(compile(example, "README.md", "exec"), {})
    assert (tmp_path / "model.npz").exists()


def test_readme_command_line_examples_keep_the_resumed_run(tmp_path):
    """The README's command-line block: its saving run (cut to 3 epochs) and the --resume after it, as
    printed; model.npz must then hold the resumed 60 epochs that 'gpumlp evaluate model.npz' scores
    (a --resume without --save trains and then drops the result)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"^```console\ngpumlp train .*?\n```", text, flags=re.S | re.M).group(0)
    commands = [c.split("#")[0].split() for c in block.replace("\\\n", " ").splitlines()[1:-1]]
    ran = 0
    for argv in commands:
        if argv[:2] == ["gpumlp", "train"] and "--save" in argv:
            argv = argv + ["--epochs", "3"] if "--resume" not in argv else argv
            subprocess.run([sys.executable, "-m", "gpumlp", *argv[1:], "--quiet", "--backend", "numpy"],
                           cwd=tmp_path, check=True, capture_output=True, timeout=120)
            ran += 1
    assert ran == 2, "the README shows a training run with --save and its --resume"
    import gpumlp

    assert gpumlp.load(tmp_path / "model.npz").named_steps["mlp"].epochs_ == 60
