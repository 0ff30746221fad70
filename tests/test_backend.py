"""Backend selection: "auto" never needs a GPU, "cupy" without one is a clear error, import is quiet."""
import os
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


def _auto_in_a_fresh_process(prelude="pass"):
    """(whether 'auto' imported CuPy, the backend it chose, its reason) in a new interpreter."""
    code = (f"import sys, gpumlp; from gpumlp import backend; {prelude}; m = gpumlp.MLP((2, 3, 2)); "
            "print(int('cupy' in sys.modules)); print(m.backend); print(m.array_backend.reason)")
    env = {k: v for k, v in os.environ.items() if k != "GPUMLP_BACKEND"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    imported, name, reason = out.stdout.splitlines()
    return imported == "1", name, reason


def test_auto_without_a_cuda_driver_never_imports_cupy():
    """The driver is looked for first: where there is none, "auto" picks NumPy without importing CuPy
    (half a second on the first model of every CPU-only process where CuPy is installed)."""
    imported, name, reason = _auto_in_a_fresh_process(
        "backend._LINUX_DRIVER_LIBRARIES = ('libgpumlp_no_such_driver.so',); "
        "backend._DRIVER_LIBRARIES = {'win32': ('no_such_driver.dll',), 'darwin': ()}")
    assert (imported, name) == (False, "numpy")
    assert "no CUDA driver" in reason


def test_auto_on_this_machine_imports_cupy_only_with_a_driver():
    driver, _ = backend.cuda_driver_status()
    imported, name, _ = _auto_in_a_fresh_process()
    if not driver:  # CI and every CPU-only machine
        assert not imported and name == "numpy"
    else:
        assert imported


def test_a_library_that_is_not_the_driver_is_no_driver(monkeypatch, tmp_path):
    """A library found under the driver's name that lacks cuInit (here: the C library) means no GPU."""
    import ctypes.util

    libc = ctypes.util.find_library("c")
    if libc is None:
        pytest.skip("no C library to stand in")
    monkeypatch.setattr(backend, "_LINUX_DRIVER_LIBRARIES", (libc,))
    monkeypatch.setattr(backend, "_DRIVER_LIBRARIES", {"win32": (libc,), "darwin": (libc,)})
    backend.cuda_driver_status.cache_clear()
    try:
        ok, why = backend.cuda_driver_status()
    finally:
        backend.cuda_driver_status.cache_clear()
    assert not ok and "not a CUDA driver" in why


def test_a_missing_backend_is_a_typed_error(monkeypatch):
    monkeypatch.setattr(backend, "cupy_status", lambda: (False, "no CUDA driver is installed (test)"))
    with pytest.raises(backend.BackendUnavailable, match=r"backend='cupy' was asked for, but no CUDA driver"):
        backend.resolve("cupy")
    assert issubclass(backend.BackendUnavailable, RuntimeError)
    assert backend.resolve("auto").name == "numpy"


def test_is_device_array_answers_from_the_type_alone():
    fake = type("ndarray", (), {"__module__": "cupy._core.core"})()
    assert backend.is_device_array(fake) and not backend.is_device_array(np.zeros(2))
    assert not backend.is_device_array([1, 2])
