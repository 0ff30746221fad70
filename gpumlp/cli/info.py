"""``gpumlp info``: versions, the backend "auto" picks and why, the device, the distributed engines."""
from __future__ import annotations

import os
import platform

import numpy as np

from .. import distributed
from .._version import __version__
from ..backend import ENV_VAR, cpu_name, resolve
from .report import json_line


def cmd_info(args):
    info = {"gpumlp": __version__, "python": platform.python_version(), "numpy": np.__version__,
            "cupy": None, "cuda_runtime": None, "cuda_driver": None}
    try:
        import cupy

        info["cupy"] = cupy.__version__
        try:
            info["cuda_runtime"] = _cuda_version(cupy.cuda.runtime.runtimeGetVersion())
            driver = cupy.cuda.runtime.driverGetVersion()
            info["cuda_driver"] = _cuda_version(driver) if driver else "none"
        except Exception as exc:  # no driver
            info["cuda_driver"] = f"unavailable ({' '.join(str(exc).split())})"
    except Exception as exc:
        info["cupy"] = f"not importable ({type(exc).__name__})"
    try:
        b = resolve("auto")
        info["auto_backend"], info["reason"] = b.name, b.reason
    except (ValueError, RuntimeError) as exc:
        info["auto_backend"], info["reason"] = None, str(exc)
        b = None
    info["env"] = os.environ.get(ENV_VAR)
    if b is not None and b.is_gpu:
        cupy = b.xp
        dev = cupy.cuda.Device()
        info["device"] = b.device_name()
        free, total = cupy.cuda.runtime.memGetInfo()
        info["device_memory_gib"] = round(total / 2**30, 2)
        info["device_memory_free_gib"] = round(free / 2**30, 2)
        info["compute_capability"] = dev.compute_capability
    else:
        info["device"] = cpu_name()
        info["device_memory_gib"] = _host_memory_gib()
        info["cpu_count"] = os.cpu_count()
    info["distributed"] = {name: {"available": e.available, "detail": e.detail}
                           for name, e in distributed.engines().items()}
    if args.json:
        print(json_line(info))
        return 0
    print(f"gpumlp {info['gpumlp']}  (Python {info['python']})")
    print(f"NumPy  {info['numpy']}")
    print(f"CuPy   {info['cupy'] or 'not installed'}")
    if info["cuda_runtime"] or info["cuda_driver"]:
        print(f"CUDA   runtime {info['cuda_runtime']}, driver {info['cuda_driver']}")
    src = f" (${ENV_VAR}={info['env']})" if info["env"] else ""
    reason = info["reason"].removeprefix("NumPy chosen: ")
    print(f"backend 'auto' picks {info['auto_backend']}{src}: {reason}")
    mem = f"{info['device_memory_gib']} GiB" if info["device_memory_gib"] else "memory unknown"
    extra = f", {info.get('cpu_count')} CPU cores" if info.get("cpu_count") else \
        f", {info.get('device_memory_free_gib')} GiB free, compute capability {info.get('compute_capability')}"
    print(f"device: {info['device']} ({mem}{extra})")
    for name, e in info["distributed"].items():
        print(f"distributed {name}: {'available' if e['available'] else 'unavailable'} ({e['detail']})")
    return 0


def _cuda_version(v):
    return f"{v // 1000}.{v % 1000 // 10}" if isinstance(v, int) and v > 0 else str(v)


def _host_memory_gib():
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 2)
    except (ValueError, OSError, AttributeError):
        return None

