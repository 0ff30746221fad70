"""The one module that decides between NumPy and CuPy.

``resolve(name)`` turns "auto" | "numpy" | "cupy" (or ``$GPUMLP_BACKEND``) into a :class:`Backend`.
CuPy is imported lazily, only when asked for or probed, so ``import gpumlp`` never needs a GPU.
"auto" picks CuPy only when it imports *and* a CUDA device answers; otherwise NumPy, silently.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field

import numpy as np

BACKENDS = ("auto", "numpy", "cupy")
ENV_VAR = "GPUMLP_BACKEND"


def array_module(a):
    """NumPy or CuPy, whichever owns ``a`` (without importing CuPy)."""
    return _cupy_module() if type(a).__module__.startswith("cupy") else np


@functools.lru_cache(maxsize=None)
def _cupy_module():
    import cupy

    return cupy


def cupy_status():
    """(usable, reason): whether CuPy imports and a CUDA device answers, and why not."""
    try:
        cupy = _cupy_module()
    except Exception as exc:  # ImportError, or a broken CUDA install raising at import
        return False, f"CuPy is not importable ({type(exc).__name__}: {exc})"
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDARuntimeError without a driver
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

    def asarray(self, a, dtype=None):
        """Host or device array -> this backend's array (one copy at most)."""
        return self.xp.asarray(a, dtype=dtype)

    def to_host(self, a):
        """Backend array -> NumPy array (a copy for CuPy, the array itself for NumPy)."""
        return a.get() if self.is_gpu else a

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
            raise RuntimeError(f"backend='cupy' was asked for, but {why}. Use backend='numpy' or 'auto'.")
        return Backend("cupy", _cupy_module(), why)
    return Backend("cupy", _cupy_module(), why) if ok else Backend("numpy", np, f"NumPy chosen: {why}")
