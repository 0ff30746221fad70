"""The one module that decides between NumPy and CuPy, and the only one that asks "is this a CuPy array".

``resolve(name)`` turns "auto" | "numpy" | "cupy" (or ``$GPUMLP_BACKEND``) into a :class:`Backend`.
"auto" picks CuPy only when a CUDA driver is installed, a device answers, CuPy imports *and* CuPy
loads the CUDA libraries that gpumlp's GPU path calls (cuBLAS for the matrix products, NVRTC to compile
our kernels); otherwise NumPy, silently, with the reason (``gpumlp info`` prints it). The driver is
looked for first, through the CUDA driver library itself (``libcuda``, via ctypes): on a machine
without one, CuPy is never imported (importing it costs about half a second even where it cannot run).
``import gpumlp`` imports no CuPy either.

CuPy 14 loads cuBLAS and cuSPARSE only when their modules are first used, and NVRTC at the first kernel
compile: ``import cupy`` and a device count succeeding on a machine with a driver and no CUDA toolkit
says nothing about whether a GEMM can run. ``cuda_library_problem(name)`` tries one of them;
``cublas_module()`` is ``cupy.cublas`` or a ``BackendUnavailable`` that names what to install.

``is_device_array(a)`` answers whether ``a`` is a CuPy array without importing CuPy, ``is_sparse(a)``
whether it is a SciPy or CuPy sparse matrix without importing either. ``cupy_from_dlpack(a)`` reads another
library's CUDA array into CuPy (``gpumlp.validation.as_array`` decides when), ``cuda_device()`` is CuPy's device.
``BackendUnavailable`` (a RuntimeError) is what asking for ``backend="cupy"`` raises where it cannot run.
"""
from __future__ import annotations

import ctypes
import functools
import importlib
import os
import sys
from dataclasses import dataclass, field

import numpy as np

BACKENDS = ("auto", "numpy", "cupy")
ENV_VAR = "GPUMLP_BACKEND"


class BackendUnavailable(RuntimeError):
    """The backend asked for cannot run here (no CUDA driver, no device, CuPy missing, or a CUDA library
    that CuPy cannot load); says why."""


def is_device_array(a) -> bool:
    """Whether ``a`` is a CuPy array (answered from its type, without importing CuPy)."""
    return type(a).__module__.startswith("cupy")


def is_sparse(a) -> bool:
    """Whether ``a`` is a SciPy sparse matrix or array, or a CuPy one (``cupyx.scipy.sparse``), answered
    from its type (neither SciPy nor CuPy is imported)."""
    module = type(a).__module__
    return module.startswith("scipy.sparse") or module.startswith("cupyx.scipy.sparse")


def array_module(a):
    """NumPy or CuPy, whichever owns ``a`` (without importing CuPy for NumPy arrays)."""
    return _cupy_module() if is_device_array(a) else np


def _cupy_module():
    # Not cached: once CuPy is imported this is a lookup in sys.modules, and a stand-in that a test
    # puts there is what every caller then gets.
    import cupy

    return cupy


def cuda_device() -> int:
    """The id of CuPy's current CUDA device, where gpumlp's device arrays are made (imports CuPy)."""
    return int(_cupy_module().cuda.Device().id)


def cupy_from_dlpack(a):
    """A CUDA array of another library (``__dlpack__``: a torch tensor on the GPU, a JAX array, ...) as a CuPy
    array on the same device memory, without a copy (``cupy.from_dlpack``, which passes CuPy's current stream
    to the producer, so that its pending work on the array comes first). Imports CuPy."""
    return _cupy_module().from_dlpack(a)


# The CUDA libraries that CuPy loads on first use, each tried as gpumlp's code will first reach it.
# cuBLAS: ``import cupy.cublas`` (what CupyOps imports) loads libcublas and libcublasLt. NVRTC: CuPy
# links it at run time, on the first call; its version is the cheapest call (no compile). cuSPARSE (sparse
# X only): asking CuPy's library package for the module loads libcusparse (and libnvJitLink) as cupyx does.
def _load_cublas():
    importlib.import_module("cupy.cublas")


def _load_nvrtc():
    importlib.import_module("cupy_backends.cuda.libs.nvrtc").getVersion()


def _load_cusparse():
    getattr(importlib.import_module("cupy_backends.cuda.libs"), "cusparse")


CUDA_LIBRARIES = {  # name -> (what gpumlp uses it for, how it is loaded)
    "cuBLAS": ("the matrix products", _load_cublas),
    "NVRTC": ("which compiles gpumlp's CUDA kernels", _load_nvrtc),
    "cuSPARSE": ("sparse X on the GPU", _load_cusparse),
}
REQUIRED_LIBRARIES = ("cuBLAS", "NVRTC")  # every model on CuPy; cuSPARSE only where sparse X goes to the device


def _first_line(exc) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else ""
    line = line if len(line) <= 200 else line[:197] + "..."
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


def cuda_library_problem(name):
    """None when CuPy loads the CUDA library ``name`` (a key of ``CUDA_LIBRARIES``), else why not, in
    one line. Imports CuPy: call it only where a driver is known to be there."""
    try:
        CUDA_LIBRARIES[name][1]()
    except Exception as exc:  # ImportError (cuBLAS, cuSPARSE), RuntimeError (NVRTC's loader), ...
        return _first_line(exc)
    return None


def install_hint():
    """How to get the CUDA libraries CuPy needs, for the CUDA line of the installed CuPy."""
    try:
        major = str(int(_cupy_module().cuda.runtime.runtimeGetVersion()) // 1000)
    except Exception:  # noqa: BLE001 - only the hint's wording depends on it
        major = None
    extra = f"gpumlp[cuda{major}]" if major in ("12", "13") else "gpumlp[cuda12] or gpumlp[cuda13] (your CUDA line)"
    return (f"install the CUDA libraries with pip install '{extra}' (CuPy's [ctk] extra: NVIDIA's wheels) "
            f"or a CUDA{' ' + major if major else ''} toolkit")


def require_cuda_library(name, needed_for=None):
    """Raise ``BackendUnavailable`` naming ``name``, what needs it and what to install, unless CuPy
    loads it."""
    problem = cuda_library_problem(name)
    if problem is not None:
        raise BackendUnavailable(f"{needed_for or CUDA_LIBRARIES[name][0]} needs {name}, which CuPy cannot "
                                 f"load ({problem}); {install_hint()}")


def cublas_module():
    """``cupy.cublas`` with cuBLAS loaded, or ``BackendUnavailable`` naming cuBLAS and the fix."""
    require_cuda_library("cuBLAS", "gpumlp's GPU path (its matrix products)")
    return importlib.import_module("cupy.cublas")


# CUDA driver API (cuda.h): CUresult 0 = CUDA_SUCCESS.
_DRIVER_LIBRARIES = {"win32": ("nvcuda.dll",), "darwin": ()}
_LINUX_DRIVER_LIBRARIES = ("libcuda.so.1", "libcuda.so")


@functools.lru_cache(maxsize=None)
def cuda_driver_status():
    """(usable, reason): whether the CUDA driver library loads and reports at least one device.

    Asks the driver itself (``cuInit``, ``cuDeviceGetCount``) through ctypes, so no CuPy is imported;
    ``CUDA_VISIBLE_DEVICES`` applies as it does for every CUDA program. Probed once per process.
    """
    names = _DRIVER_LIBRARIES.get(sys.platform, _LINUX_DRIVER_LIBRARIES)
    lib = None
    for name in names:
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError:
            continue
    if lib is None:
        return False, "no CUDA driver is installed (the driver library libcuda was not found)"
    try:
        status = lib.cuInit(0)
        if status != 0:
            return False, f"the CUDA driver did not initialise (cuInit returned error {status}: no usable device)"
        count = ctypes.c_int(0)
        status = lib.cuDeviceGetCount(ctypes.byref(count))
    except AttributeError:  # a library of that name that is not the CUDA driver
        return False, "the library found as libcuda is not a CUDA driver"
    if status != 0 or count.value < 1:
        return False, "the CUDA driver sees no device"
    return True, f"CUDA driver with {count.value} device(s)"


def cupy_status():
    """(usable, reason): whether a CUDA device answers, CuPy imports and can use it, and CuPy loads
    the libraries of ``REQUIRED_LIBRARIES``; and why not.

    The driver is checked first (``cuda_driver_status``): without one, CuPy is not imported at all.
    Probed once per process, like the driver (``cupy_status.cache_clear()`` probes again).
    """
    driver_ok, why = cuda_driver_status()
    if not driver_ok:
        return False, why
    return _cupy_runtime_status()


def _cache_clear():
    _cupy_runtime_status.cache_clear()


cupy_status.cache_clear = _cache_clear


@functools.lru_cache(maxsize=None)
def _cupy_runtime_status():
    try:
        cupy = _cupy_module()
    except Exception as exc:  # ImportError, or a broken CUDA install raising at import
        return False, f"CuPy is not importable ({type(exc).__name__}: {exc})"
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDARuntimeError: e.g. a driver older than CuPy's CUDA runtime
        return False, f"CuPy imports but CUDA is unusable ({exc})"
    if n < 1:
        return False, "CuPy imports but no CUDA device is visible"
    problems = {name: cuda_library_problem(name) for name in REQUIRED_LIBRARIES}
    missing = [name for name, problem in problems.items() if problem is not None]
    if missing:
        details = "; ".join(f"{name} ({CUDA_LIBRARIES[name][0]}): {problems[name]}" for name in missing)
        return False, (f"CuPy {cupy.__version__} sees {n} CUDA device(s), and cannot load {' and '.join(missing)}: "
                       f"{details}; {install_hint()}")
    return True, f"CuPy {cupy.__version__} with {n} CUDA device(s)"


@dataclass(frozen=True)
class Backend:
    """What the rest of gpumlp needs to know about where arrays live."""

    name: str  # "numpy" | "cupy"
    xp: object = field(repr=False)  # the array module
    reason: str = ""  # why "auto" chose it, for `gpumlp info`

    @property
    def is_gpu(self) -> bool:
        return self.name == "cupy"

    def owns(self, a) -> bool:
        """Whether ``a`` is an array of this backend (a device array for CuPy, a NumPy array else)."""
        return is_device_array(a) if self.is_gpu else isinstance(a, np.ndarray)

    def asarray(self, a, dtype=None):
        """Host or device array -> this backend's array (one copy at most). A sparse matrix (SciPy or
        cupyx, any format) becomes a CSR matrix of this backend: SciPy's on NumPy, cupyx's on CuPy."""
        if is_sparse(a):
            return self._csr(a, dtype)
        return self.xp.asarray(a, dtype=dtype)

    def _csr(self, a, dtype):
        on_device = is_device_array(a)  # cupyx.scipy.sparse
        if self.is_gpu and not on_device:
            # cupyx holds bool, float32, float64 and complex data only: integer data (CountVectorizer's
            # int64 counts) or float16 are cast here, on the host, before the copy (to ``dtype``, or
            # without one to the narrowest of float32/float64 that holds them exactly).
            a = a.tocsr()
            target = np.dtype(dtype) if dtype is not None else (
                a.dtype if a.dtype.kind in "bc" or a.dtype in (np.float32, np.float64)
                else np.result_type(a.dtype, np.float32))
            if a.dtype != target:
                a = a.astype(target)
            require_cuda_library("cuSPARSE")
            sparse = importlib.import_module("cupyx.scipy.sparse")
            a = sparse.csr_matrix(a)  # host -> device: data, indices, indptr
        elif not self.is_gpu and on_device:
            a = a.get()
        a = a.tocsr()
        return a if dtype is None or a.dtype == dtype else a.astype(dtype)

    def to_host(self, a):
        """Backend array -> NumPy array (a copy for CuPy, the array itself for NumPy); a cupyx sparse
        matrix -> SciPy's."""
        return a.get() if is_device_array(a) else a

    def synchronize(self):
        if self.is_gpu:
            self.xp.cuda.get_current_stream().synchronize()

    def device_name(self) -> str:
        """The GPU's name as CUDA reports it, or the CPU's model name."""
        if not self.is_gpu:
            return cpu_name()
        props = self.xp.cuda.runtime.getDeviceProperties(self.xp.cuda.Device().id)
        name = props["name"]
        return name.decode() if isinstance(name, bytes) else str(name)


def to_host(a):
    """Any array -> NumPy (a copy from the device for CuPy arrays, ``np.asarray`` otherwise)."""
    return a.get() if is_device_array(a) else np.asarray(a)


def is_gpu_out_of_memory(exc) -> bool:
    """CuPy's OutOfMemoryError (or a CUDA allocation failure), recognised without importing CuPy."""
    for cls in type(exc).__mro__:
        if cls.__module__.startswith("cupy") and (cls.__name__ == "OutOfMemoryError"
                                                 or "out of memory" in str(exc).lower()
                                                 or "ALLOC_FAILED" in str(exc)):
            return True
    return False


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), else what the platform module knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine() or "cpu"


def resolve(name: str | None = "auto") -> Backend:
    """Backend for "auto" | "numpy" | "cupy"; ``None`` or "auto" consults $GPUMLP_BACKEND first."""
    if name is None or name == "auto":
        name = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
        source = f"${ENV_VAR}"
    else:
        source = "backend argument"
    if not isinstance(name, str) or name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r} (from the {source})")
    if name == "numpy":
        return Backend("numpy", np, "asked for")
    ok, why = cupy_status()
    if name == "cupy":
        if not ok:
            raise BackendUnavailable(f"backend='cupy' was asked for, but {why}. Use backend='numpy' or 'auto'.")
        return Backend("cupy", _cupy_module(), why)
    return Backend("cupy", _cupy_module(), why) if ok else Backend("numpy", np, f"NumPy chosen: {why}")
