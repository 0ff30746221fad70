"""The one module that decides between NumPy and CuPy, and the only one that asks "is this a CuPy array".

``resolve(name)`` turns "auto" | "numpy" | "cupy" (or ``$GPUMLP_BACKEND``) into a :class:`Backend`.
"auto" picks CuPy only when a CUDA driver is installed, a device answers *and* CuPy imports;
otherwise NumPy, silently. The driver is looked for first, through the CUDA driver library itself
(``libcuda``, via ctypes): on a machine without one, CuPy is never imported (importing it costs about
half a second even where it cannot run). ``import gpumlp`` imports no CuPy either.

``is_device_array(a)`` answers whether ``a`` is a CuPy array without importing CuPy, ``is_sparse(a)``
whether it is a SciPy or CuPy sparse matrix without importing either.
``BackendUnavailable`` (a RuntimeError) is what asking for ``backend="cupy"`` raises where it cannot run.
"""
from __future__ import annotations

import ctypes
import functools
import os
import sys
from dataclasses import dataclass, field

import numpy as np

BACKENDS = ("auto", "numpy", "cupy")
ENV_VAR = "GPUMLP_BACKEND"


class BackendUnavailable(RuntimeError):
    """The backend asked for cannot run here (no CUDA driver, no device, or CuPy missing); says why."""


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


@functools.lru_cache(maxsize=None)
def _cupy_module():
    import cupy

    return cupy


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
    """(usable, reason): whether a CUDA device answers and CuPy imports and can use it, and why not.

    The driver is checked first (``cuda_driver_status``): without one, CuPy is not imported at all.
    """
    driver_ok, why = cuda_driver_status()
    if not driver_ok:
        return False, why
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
            import cupyx.scipy.sparse

            a = cupyx.scipy.sparse.csr_matrix(a.tocsr())  # host -> device: data, indices, indptr
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
