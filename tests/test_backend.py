"""Backend selection: "auto" never needs a GPU, "cupy" without one is a clear error, import is quiet."""
import subprocess
import sys

import numpy as np
import pytest

import gpumlp
from gpumlp import backend


def test_numpy_backend_by_name_and_by_environment(monkeypatch):
    assert backend.resolve("numpy").xp is np
    monkeypatch.setenv("GPUMLP_BACKEND", "numpy")
    assert backend.resolve("auto").name == "numpy"
    assert gpumlp.MLP((2, 3, 2)).backend == "numpy"


def test_unknown_backend_names_the_problem(monkeypatch):
    with pytest.raises(ValueError, match="backend must be one of"):
        backend.resolve("tpu")
    monkeypatch.setenv("GPUMLP_BACKEND", "opencl")
    with pytest.raises(ValueError, match="GPUMLP_BACKEND"):
        gpumlp.MLP((2, 3, 2))


def test_auto_falls_back_to_numpy_without_a_device(monkeypatch):
    monkeypatch.delenv("GPUMLP_BACKEND", raising=False)
    ok, why = backend.cupy_status()
    b = backend.resolve("auto")
    assert b.name == ("cupy" if ok else "numpy")
    if not ok:
        assert why in b.reason


def test_cupy_without_a_device_is_a_clear_error():
    ok, why = backend.cupy_status()
    if ok:
        pytest.skip("a CUDA device is present: the error path cannot be exercised here")
    with pytest.raises(RuntimeError, match="backend='cupy'"):
        gpumlp.MLP((2, 3, 2), backend="cupy")


def test_import_is_quiet_fast_and_does_not_import_cupy():
    code = ("import sys, time; t = time.perf_counter(); import gpumlp; dt = time.perf_counter() - t; "
            "print(int('cupy' in sys.modules), dt)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    imported_cupy, seconds = out.stdout.split()
    assert out.stderr == ""
    assert imported_cupy == "0"
    assert float(seconds) < 2.0  # numpy's own import dominates; CuPy's would add seconds
