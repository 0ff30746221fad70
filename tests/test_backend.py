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
    """Fast by what it loads, not by a clock (a wall-clock bound depends on the machine and its load):
    beside the standard library, only NumPy, whose import then dominates; CuPy (seconds), SciPy,
    scikit-learn, matplotlib, PyTorch, mpi4py and tqdm wait until something asks for them."""
    code = ("import sys; before = set(sys.modules); import gpumlp; "
            "print(' '.join(sorted({m.split('.')[0] for m in set(sys.modules) - before} - set(sys.stdlib_module_names))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stderr == ""
    assert out.stdout.split() == ["gpumlp", "numpy"]


def _auto_in_a_fresh_process(prelude="pass"):
    """(whether 'auto' imported CuPy, the backend it chose, its reason) in a new interpreter."""
    code = (f"import sys, gpumlp; from gpumlp import backend; {prelude}; m = gpumlp.MLP((2, 3, 2)); "
            "print(int('cupy' in sys.modules)); print(m.backend); print(m.array_backend.reason)")
    env = {k: v for k, v in os.environ.items() if k != "GPUMLP_BACKEND"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env,
                         timeout=120)
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


# ------------------------------------------------------------------ CuPy without its CUDA libraries
# CuPy 14 loads cuBLAS when cupy.cublas is imported and NVRTC at its first call: on a machine with a
# driver and no CUDA toolkit, `import cupy` and the device count work and every model would fail at its
# first GEMM or kernel. The probe tries both; a stand-in CuPy (in sys.modules, where the probe looks)
# has a device and either library missing, as on such a machine.
NVRTC = "cupy_backends.cuda.libs.nvrtc"


def _stand_in_cupy(monkeypatch, cublas=True, nvrtc=True):
    import types

    cupy = types.ModuleType("cupy")
    cupy.__version__ = "14.2.0"
    cupy.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=lambda: 1,
                                                                    runtimeGetVersion=lambda: 13020))
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    # None in sys.modules: `import cupy.cublas` raises ImportError, as CuPy's does without libcublasLt
    monkeypatch.setitem(sys.modules, "cupy.cublas", types.ModuleType("cupy.cublas") if cublas else None)

    def version():
        if not nvrtc:  # what CuPy's run-time link raises when it finds no libnvrtc
            raise RuntimeError('Failure finding "libnvrtc.so.13": No such file: libnvrtc.so.13')
        return (13, 2)

    monkeypatch.setitem(sys.modules, NVRTC, types.SimpleNamespace(getVersion=version))
    monkeypatch.setattr(backend, "cuda_driver_status", lambda: (True, "CUDA driver with 1 device(s)"))
    _clear_probe()
    return cupy


def _clear_probe():
    getattr(backend.cupy_status, "cache_clear", lambda: None)()  # the probe is cached per process


@pytest.fixture
def fresh_probe(monkeypatch):
    monkeypatch.delenv("GPUMLP_BACKEND", raising=False)
    _clear_probe()
    yield
    _clear_probe()


@pytest.mark.parametrize("cublas, nvrtc, missing", [(False, True, ["cuBLAS"]), (True, False, ["NVRTC"]),
                                                    (False, False, ["cuBLAS", "NVRTC"])])
def test_a_cupy_that_cannot_load_cublas_or_nvrtc_is_not_chosen(monkeypatch, fresh_probe, cublas, nvrtc, missing):
    _stand_in_cupy(monkeypatch, cublas=cublas, nvrtc=nvrtc)
    ok, why = backend.cupy_status()
    assert not ok
    for name in missing:
        assert f"cannot load {' and '.join(missing)}" in why and f"{name} (" in why
    assert "gpumlp[cuda13]" in why and "sees 1 CUDA device" in why
    for name in {"cuBLAS", "NVRTC"} - set(missing):
        assert f"{name} (" not in why
    b = backend.resolve("auto")
    assert b.name == "numpy" and b.xp is np and why in b.reason
    m = gpumlp.MLP((2, 3, 2))  # "auto": NumPy, where it used to pick CuPy and fail in CupyOps
    assert m.backend == "numpy"
    with pytest.raises(backend.BackendUnavailable, match=rf"backend='cupy' was asked for, but .*{missing[0]}"):
        gpumlp.MLP((2, 3, 2), backend="cupy")


def test_a_cupy_with_its_libraries_is_chosen(monkeypatch, fresh_probe):
    cupy = _stand_in_cupy(monkeypatch)
    assert backend.cupy_status() == (True, "CuPy 14.2.0 with 1 CUDA device(s)")
    b = backend.resolve("auto")
    assert b.name == "cupy" and b.xp is cupy


def test_the_probe_runs_once_per_process(monkeypatch, fresh_probe):
    cupy = _stand_in_cupy(monkeypatch)
    calls = []
    cupy.cuda.runtime.getDeviceCount = lambda: calls.append(1) or 1
    for _ in range(3):
        backend.resolve("auto")
    assert calls == [1]


def test_cupy_ops_without_cublas_names_it(monkeypatch, fresh_probe):
    """CupyOps built directly (as the stand-in tests do) on a CuPy without cuBLAS: a typed error
    naming cuBLAS and the extra, not CuPy's ImportError from deep inside cupy.cublas."""
    _stand_in_cupy(monkeypatch, cublas=False)
    from gpumlp._cupy_ops import CupyOps

    with pytest.raises(backend.BackendUnavailable, match=r"needs cuBLAS, which CuPy cannot load .*gpumlp\[cuda13\]"):
        CupyOps(np.float32)


def test_the_real_cupy_here_without_cublas_falls_back_in_a_fresh_process():
    """The issue's reproduction with the CuPy installed here (no CUDA toolkit: the test extra brings
    NVRTC only): with a driver and a device faked, "auto" must take NumPy and say cuBLAS is missing."""
    code = ("import sys, importlib, gpumlp; from gpumlp import backend; import cupy\n"
            "try:\n    importlib.import_module('cupy.cublas'); print('loads')\n"
            "except ImportError:\n    print('missing')\n"
            "backend.cuda_driver_status = lambda: (True, 'CUDA driver with 1 device(s) (faked)')\n"
            "cupy.cuda.runtime.getDeviceCount = lambda: 1\n"
            "m = gpumlp.MLP((2, 3, 2)); print(m.backend); print(m.array_backend.reason)")
    env = {k: v for k, v in os.environ.items() if k != "GPUMLP_BACKEND"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if out.returncode != 0 and "No module named 'cupy'" in out.stderr:
        pytest.skip("CuPy is not installed here")
    assert out.returncode == 0, out.stderr
    cublas, name, reason = out.stdout.splitlines()
    if cublas == "loads":
        pytest.skip("cuBLAS loads here (a CUDA toolkit or NVIDIA's wheels): nothing to fall back from")
    assert name == "numpy" and "cannot load cuBLAS" in reason and "libcublas" in reason
