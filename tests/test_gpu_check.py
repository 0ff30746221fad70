"""benchmarks/gpu_check.py, the one-command GPU check, on the CPU: what it requires of the python that
runs it (checked before anything runs), the skip reasons it records, and its verdict (no OK without a
usable "cupy" backend and tests that passed: on a GPU whose CuPy cannot load cuBLAS every GPU test
skips, which is no check)."""
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_check)

GOOD = {"device": "NVIDIA H100 80GB HBM3", "gpumlp_backend": {"usable": True, "reason": "CuPy 14.2.0 with 1 CUDA device(s)"},
        "tests_passed": 200, "tests_failed": 0, "tests_exit_code": 0, "benchmarks_exit_code": 0}


def test_the_required_packages_are_the_gpu_images():
    """The GPU machine's image: Python, cupy-cuda13x, numpy, pytest, pytest-benchmark (and torch).
    Nothing else may be required; scipy, scikit-learn, mpi4py, matplotlib are optional."""
    assert set(gpu_check.REQUIRED) == {"numpy", "cupy", "pytest", "pytest_benchmark"}
    assert {"scipy", "sklearn", "mpi4py", "matplotlib", "torch", "tqdm"} <= set(gpu_check.OPTIONAL)


def test_a_missing_required_package_is_named(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in ("cupy", "scipy") else real(name, *a))
    missing, present = gpu_check.packages()
    assert missing == ["cupy (the GPU path)"]
    assert present["scipy"] is None and present["numpy"]
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "pytest_benchmark" else real(name, *a))
    assert gpu_check.packages()[0] == ["pytest_benchmark (the benchmarks (pytest-benchmark))"]
    assert gpu_check.packages(skip_benchmarks=True)[0] == []  # only the benchmarks need it


def test_with_a_required_package_missing_nothing_runs(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(gpu_check, "packages", lambda skip=False: (["cupy (the GPU path)"], dict.fromkeys(
        [*gpu_check.REQUIRED, *gpu_check.OPTIONAL])))
    monkeypatch.setattr(gpu_check, "run_stage", lambda *a, **k: pytest.fail("a stage ran"))
    assert gpu_check.main(["--out", str(tmp_path)]) == 1
    (path,) = tmp_path.glob("gpu_check_*_missing-packages.json")
    assert json.loads(path.read_text())["missing_packages"] == ["cupy (the GPU path)"]
    assert "NOT OK" in capsys.readouterr().out


@pytest.mark.parametrize("change", [{}, {"gpumlp_backend": {"usable": False, "reason": "cannot load cuBLAS"}},
                                    {"tests_passed": 0}, {"tests_failed": 1}, {"device": None},
                                    {"benchmarks_exit_code": 1}, {"tests_exit_code": 2}])
def test_the_verdict(change):
    assert gpu_check.checked_ok({**GOOD, **change}) is (change == {})


def test_the_skip_reasons_are_recorded(tmp_path):
    xml = tmp_path / "t.xml"
    xml.write_text('<testsuites><testsuite tests="3" skipped="2" failures="0" errors="0">'
                   '<testcase name="a"><skipped message="the mpi engine cannot run here: mpi4py is not installed"/></testcase>'
                   '<testcase name="b"><skipped message="the mpi engine cannot run here: mpi4py is not installed"/></testcase>'
                   '<testcase name="c"/><testcase name="d"><skipped message="collection skipped">'
                   f"('{ROOT}/tests/test_sparse.py', 12, 'Skipped: SciPy is not installed')"  # as pytest writes it
                   '</skipped></testcase></testsuite></testsuites>')
    assert gpu_check.junit_counts(xml) == (1, 0, 2, 0)  # the suite's own counts
    assert gpu_check.junit_skip_reasons(xml) == [
        {"reason": "the mpi engine cannot run here: mpi4py is not installed", "count": 2},
        {"reason": "tests/test_sparse.py:12: SciPy is not installed", "count": 1}]


def test_the_backend_is_reported_as_gpumlp_probes_it():
    from gpumlp.backend import cupy_status

    usable, reason = cupy_status()
    assert gpu_check.gpumlp_backend() == {"usable": usable, "reason": reason}
