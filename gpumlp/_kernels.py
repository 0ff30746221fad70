"""gpumlp's CUDA kernels, built from the sources in ``kernels/`` lazily and once per device.

The CUDA lives in ``kernels/`` (installed as the data package ``gpumlp.kernels``):

    gpumlp_math.cuh     __device__ math: φ and φ′ of every activation, the loss terms, the update rules
    gpumlp_reduce.cuh   warp/block/grid sums for the RawKernels (deterministic, one launch)
    loss.cu             gpumlp_cross_entropy_*, gpumlp_squared_*,  loss and ∂L/∂o in one pass
                        gpumlp_binary_cross_entropy_*, gpumlp_poisson_*
    optim.cu            gpumlp_sgd_update_*, gpumlp_adam_update_*  one launch over the flat θ (Adam's
                        step counter on the device)
    reduce.cu           gpumlp_sum_*                                Σa or Σa² into a 0-d array

``*`` is ``f32`` or ``f64``. The activations are ``cupy.ElementwiseKernel`` objects whose preamble is
gpumlp_math.cuh; the rest are ``cupy.RawModule`` functions. Nothing here touches a GPU at import,
and constructing the kernel objects (``make_elementwise``, ``module_source``) needs none either: the
tests compile exactly these sources with NVRTC on machines without a GPU.
"""
from __future__ import annotations

import functools
import importlib.resources
import re
from pathlib import Path

from .functions import ACTIVATIONS

MATH_HEADER = "gpumlp_math.cuh"
DTYPE_SUFFIX = {"float32": "_f32", "float64": "_f64"}
# Options for our RawModules (CuPy adds -ftz=true and its include paths itself, for every kernel).
RAW_OPTIONS = ("--std=c++17",)
# The extern "C" kernels of each .cu file, without the dtype suffix.
RAW_KERNELS = {
    "loss.cu": ("gpumlp_cross_entropy", "gpumlp_squared", "gpumlp_binary_cross_entropy", "gpumlp_poisson"),
    "optim.cu": ("gpumlp_sgd_update", "gpumlp_adam_update"),
    "reduce.cu": ("gpumlp_sum",),
}


def _elementwise_table():
    """name -> (in_params, out_params, operation) for the fused φ forward and φ′ backward; φ and φ′
    of activation a are the device functions gpumlp_<a> and gpumlp_<a>_grad of gpumlp_math.cuh."""
    table = {}
    for a in ACTIVATIONS:
        table[f"gpumlp_{a}_forward"] = ("T z", "T h", f"h = gpumlp_{a}(z)")  # h = φ(z)
        table[f"gpumlp_{a}_backward"] = ("T dh, T z, T h", "T dz", f"dz = dh * gpumlp_{a}_grad(z, h)")  # dh ⊙ φ′(z)
    return table


ELEMENTWISE = _elementwise_table()


# ------------------------------------------------------------------------------------ sources
def kernels_dir():
    """The folder of CUDA sources: the installed ``gpumlp.kernels``, or ``kernels/`` of a source tree
    that is imported without being installed (``PYTHONPATH=$PWD``)."""
    try:
        return importlib.resources.files("gpumlp.kernels")
    except ModuleNotFoundError:
        tree = Path(__file__).resolve().parent.parent / "kernels"
        if (tree / MATH_HEADER).is_file():
            return tree
        raise ModuleNotFoundError(
            "gpumlp's CUDA sources (the package gpumlp.kernels) are missing: reinstall gpumlp") from None


@functools.lru_cache(maxsize=None)
def source(name):
    """The text of one file of kernels/."""
    return (kernels_dir() / name).read_text(encoding="utf-8")


def cu_files():
    return sorted(p.name for p in kernels_dir().iterdir() if p.name.endswith(".cu"))


_LOCAL_INCLUDE = re.compile(r'^[ \t]*#include "(gpumlp_\w+\.cuh)"[ \t]*$', re.MULTILINE)


@functools.lru_cache(maxsize=None)
def module_source(name):
    """A .cu file with our own ``#include "gpumlp_*.cuh"`` lines replaced by the headers' text, so that
    NVRTC needs no include path into the installed package (the headers have include guards)."""
    return _LOCAL_INCLUDE.sub(lambda m: module_source(m.group(1)), source(name))


# ------------------------------------------------------------------------------------ kernels
def make_elementwise(name):
    """A new ``cupy.ElementwiseKernel`` for one entry of ELEMENTWISE (no GPU needed until called)."""
    import cupy

    in_params, out_params, operation = ELEMENTWISE[name]
    return cupy.ElementwiseKernel(in_params, out_params, operation, name, preamble=source(MATH_HEADER))


def make_module(cu_name):
    """A new ``cupy.RawModule`` of one .cu file (compiled on first use)."""
    import cupy

    return cupy.RawModule(code=module_source(cu_name), options=RAW_OPTIONS)


def _device_id():
    import cupy

    return cupy.cuda.runtime.getDevice()


@functools.lru_cache(maxsize=None)
def _elementwise(name, device_id):
    return make_elementwise(name)


@functools.lru_cache(maxsize=None)
def _module(cu_name, device_id):
    return make_module(cu_name)


def elementwise(name):
    """The ElementwiseKernel ``name`` for the current device, built on first use."""
    return _elementwise(name, _device_id())


def raw(function, dtype):
    """The RawKernel ``function`` (e.g. "gpumlp_sgd_update") for ``dtype`` on the current device."""
    for cu_name, functions in RAW_KERNELS.items():
        if function in functions:
            return _module(cu_name, _device_id()).get_function(function + DTYPE_SUFFIX[str(dtype)])
    raise KeyError(f"no gpumlp kernel named {function!r}")
