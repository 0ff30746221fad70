"""The CUDA device math, compiled for the host, against its NumPy twin.

kernels/gpumlp_math.cuh is plain C++ once the CUDA keywords are defined away, so g++ builds it into a
small shared library that ctypes drives. Into that library go
- every ElementwiseKernel *operation string* from gpumlp/_kernels.py (``h = gpumlp_gelu(z)``, ...),
  inside a loop shaped like CuPy's (the parameters bound as references to the array elements), for
  float and double: the exact text CuPy compiles, run on the CPU;
- the per-row loss of kernels/loss.cu (max, log-sum-exp, loss term, ∂L/∂o, weights) and the per-element
  update of kernels/optim.cu, written as host loops over the same __device__ functions;
- the .cu files themselves (every RawKernel), run by a small host emulation of CUDA: each CUDA thread a
  fiber (ucontext), __syncthreads and the warp shuffles as barriers, blocks one after another in a given
  order, the threads of a block in index order or reversed. This executes their indexing, grid-stride
  loops, warp/block reductions and the last-block grid sum. Its limit: blocks never run concurrently,
  so races between blocks show only on a GPU (tests/test_gpu.py).
- gpumlp/_cupy_ops.py itself and everything above it (model, step, trainer, L-BFGS, the estimators, the
  command line), on a strict host stand-in for CuPy (tests/cupy_standin.py: device arrays that are NumPy
  memory behind CuPy's rules, refusing NumPy arrays wherever real CuPy does; NumPy products for cuBLAS;
  the two builds above for the kernels): whole training steps and fits against the NumPy backend, every
  RawKernel launch checked against the kernel's C signature in the .cu source (count and scalar types).
  tests/test_gpu_on_standin.py runs tests/test_gpu.py on it too.
Each is compared with gpumlp.functions / gpumlp.optim on random inputs and on edge inputs: the kinks,
±large values where a naive formula overflows, ±inf and NaN.

Skips only where no C++ compiler exists, and never in CI ($CI set), where that is a failure.
"""
from __future__ import annotations

import ctypes
import os
import re
import shlex
import shutil
import subprocess
import types

import numpy as np
import pytest

from ci import in_ci
from gpumlp import _kernels
from gpumlp import functions as F
from gpumlp import optim

CTYPE = {np.float32: ("float", "f32", ctypes.c_float), np.float64: ("double", "f64", ctypes.c_double)}
# Tolerances |ours − reference| ≤ ATOL + RTOL·|reference|, per dtype. Both sides evaluate the same
# formula in the same precision; they differ only where the host libm (expf, tanhf, log1pf) and NumPy's
# own implementations round differently, ≤ 2 ulp, i.e. ~1e-7 (float32) and ~2e-16 (float64) relative.
# ATOL covers the one amplification the formulas share: in gelu′ near the tail (|z| ≈ 4..5.5 in float32,
# ..9.5 in float64, until tanh rounds to ±1 exactly) a 1-ulp difference of t = tanh(·) near ±1 is
# multiplied by |z K (1 + 3C z²)| ≲ 20 (float32) or 100 (float64): 20 · 6e-8 ≈ 1.2e-6 and
# 100 · 1.1e-16 ≈ 1e-14 absolute, on values that are themselves ~1e-7 (float32).
# The host build keeps subnormals and rounds every operation on its own, as NumPy does, so the subnormal
# and saturating edges (SUBNORMAL, SATURATING) hold to these tolerances with no allowance of their own;
# what the GPU's flush-to-zero and FMAs change there is in test_activation_kernels_under_the_gpus_float_rules.
RTOL = {np.float32: 1e-5, np.float64: 1e-12}
ATOL = {np.float32: 5e-6, np.float64: 1e-13}

PRELUDE = """
#include <math.h>
// CUDA keywords defined away: the header is then plain C++.
#define __device__
#define __forceinline__ inline
#include "gpumlp_math.cuh"
// GPUMLP_GPU_FLOAT_RULES (the GPU arithmetic model build, gpu_float_model below): float32 entry points
// run as CuPy's -ftz=true has the GPU run float32 arithmetic, subnormal inputs read as zero and subnormal
// results flushed to zero, for their duration (x86-64: MXCSR's DAZ and FTZ bits; AArch64: FPCR.FZ,
// which does both). float64 is never flushed (-ftz applies to float32 only).
#if defined(GPUMLP_GPU_FLOAT_RULES) && defined(__x86_64__)
#include <xmmintrin.h>
struct gpumlp_ftz_scope {
    unsigned int saved;
    gpumlp_ftz_scope() : saved(_mm_getcsr()) { _mm_setcsr(saved | 0x8040u); }  // FTZ (bit 15) | DAZ (bit 6)
    ~gpumlp_ftz_scope() { _mm_setcsr(saved); }
};
#define GPUMLP_FLOAT_SCOPE_float gpumlp_ftz_scope gpumlp_scope_;
#elif defined(GPUMLP_GPU_FLOAT_RULES) && defined(__aarch64__)
struct gpumlp_ftz_scope {
    unsigned long saved;
    gpumlp_ftz_scope() { asm volatile("mrs %0, fpcr" : "=r"(saved)); asm volatile("msr fpcr, %0" :: "r"(saved | (1ul << 24))); }
    ~gpumlp_ftz_scope() { asm volatile("msr fpcr, %0" :: "r"(saved)); }
};
#define GPUMLP_FLOAT_SCOPE_float gpumlp_ftz_scope gpumlp_scope_;
#elif defined(GPUMLP_GPU_FLOAT_RULES)
#error "the GPU arithmetic model needs x86-64 or AArch64 (to flush float32 subnormals)"
#else
#define GPUMLP_FLOAT_SCOPE_float
#endif
#define GPUMLP_FLOAT_SCOPE_double
"""



def _host_compiler(what):
    """The host C++ compiler as an argument list (``CXX`` may carry flags, as in ``CXX="g++ -m64"``); CI
    must have one (failing, not skipping), elsewhere the test skips."""
    cxx = shlex.split(os.environ.get("CXX", "")) or [
        c for c in (shutil.which("g++") or shutil.which("c++") or shutil.which("clang++"),) if c]
    if not cxx or shutil.which(cxx[0]) is None:
        if in_ci():
            pytest.fail(f"CI must run {what} on the host, but no C++ compiler was found "
                        f"(CXX={os.environ.get('CXX', '')!r})")
        pytest.skip("no host C++ compiler (g++, c++, clang++, or CXX)")
    return cxx


def _compile(cmd):
    """Run the compiler with its messages in English (the warning check reads them) and a time limit."""
    env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)



def _params(spec):
    """'T dh, T z' -> ['dh', 'z'] (ElementwiseKernel parameter lists of T-typed arrays)."""
    names = []
    for p in spec.split(","):
        ctype, name = p.split()
        assert ctype == "T"
        names.append(name)
    return names


def elementwise_cpp(name, ctype, suffix):
    """A host loop that runs one ElementwiseKernel's operation string as CuPy's loop would."""
    in_params, out_params, operation = _kernels.ELEMENTWISE[name]
    ins, outs = _params(in_params), _params(out_params)
    args = [f"const T* _raw_{p}" for p in ins] + [f"T* _raw_{p}" for p in outs]
    refs = [f"const T& {p} = _raw_{p}[i];" for p in ins] + [f"T& {p} = _raw_{p}[i];" for p in outs]
    return f"""
namespace {name}_{suffix} {{
typedef {ctype} T;
extern "C" void {name}_{suffix}({", ".join(args)}, long long n) {{
    GPUMLP_FLOAT_SCOPE_{ctype}
    for (long long i = 0; i < n; ++i) {{ {" ".join(refs)} {operation}; }}
}}
}}"""


LOOPS = r"""
// kernels/loss.cu, one row at a time instead of one warp per row.
template <typename F>
static void cross_entropy_rows(const F* o, const long long* y, const F* w, F* dout, F* loss, int B, int q) {
    F wsum = 0, total = 0;
    if (w) for (int i = 0; i < B; ++i) wsum += w[i];
    for (long long row = 0; row < B; ++row) {
        const F* orow = o + row * q;
        F m = orow[0], s = 0;
        for (int j = 0; j < q; ++j) m = orow[j] > m ? orow[j] : m;
        for (int j = 0; j < q; ++j) s += gpumlp_math_exp(orow[j] - m);
        const F scale = w ? w[row] / wsum : F(1) / F(B);
        for (int j = 0; j < q; ++j) dout[row * q + j] = gpumlp_ce_grad(orow[j], m, s, j == y[row]) * scale;
        total += scale * gpumlp_ce_loss(orow[y[row]], m, s);
    }
    *loss = total;
}
// The per-element losses of kernels/loss.cu (squared, binary cross-entropy, Poisson): term and grad per element.
template <typename F, F (*term)(F, F), F (*grad)(F, F)>
static void pointwise_rows(const F* o, const F* y, const F* w, F* dout, F* loss, int B, int q) {
    F wsum = 0, total = 0;
    if (w) for (int i = 0; i < B; ++i) wsum += w[i];
    for (long long row = 0; row < B; ++row) {
        const F scale = w ? w[row] / wsum : F(1) / F(B);
        F l = 0;
        for (int j = 0; j < q; ++j) {
            dout[row * q + j] = grad(o[row * q + j], y[row * q + j]) * scale;
            l += term(o[row * q + j], y[row * q + j]);
        }
        total += scale * l;
    }
    *loss = total;
}
// kernels/optim.cu, the same loop body.
template <typename F>
static void sgd_update(F* theta, const F* grad, F* velocity, long long n, long long n_decay, F lr, F lam, F mu,
                       int nesterov) {
    for (long long i = 0; i < n; ++i) {
        const F lam_i = i < n_decay ? lam : F(0);
        theta[i] = velocity ? gpumlp_sgd_momentum(theta[i], grad[i], velocity + i, lr, lam_i, mu, nesterov != 0)
                            : gpumlp_sgd(theta[i], grad[i], lr, lam_i);
    }
}
template <typename F>
static void adam_update(F* theta, const F* grad, F* m, F* v, long long n, long long n_decay, F lr, F lam, F beta1,
                        F beta2, F eps, F c1, F c2, int decoupled) {
    for (long long i = 0; i < n; ++i) {
        const F lam_i = i < n_decay ? lam : F(0);
        theta[i] = gpumlp_adam(theta[i], grad[i], m + i, v + i, lr, lam_i, beta1, beta2, eps, c1, c2, decoupled != 0);
    }
}
#define HOST_LOOPS(F, S)                                                                                     \
    extern "C" void cross_entropy_##S(const F* o, const long long* y, const F* w, F* d, F* L, int B, int q) { \
        cross_entropy_rows<F>(o, y, w, d, L, B, q);                                                          \
    }                                                                                                        \
    extern "C" void squared_##S(const F* o, const F* y, const F* w, F* d, F* L, int B, int q) {              \
        pointwise_rows<F, gpumlp_squared_term<F>, gpumlp_squared_grad<F>>(o, y, w, d, L, B, q);              \
    }                                                                                                        \
    extern "C" void binary_cross_entropy_##S(const F* o, const F* y, const F* w, F* d, F* L, int B, int q) {   \
        pointwise_rows<F, gpumlp_bce_term<F>, gpumlp_bce_grad<F>>(o, y, w, d, L, B, q);                      \
    }                                                                                                        \
    extern "C" void poisson_##S(const F* o, const F* y, const F* w, F* d, F* L, int B, int q) {              \
        pointwise_rows<F, gpumlp_poisson_term<F>, gpumlp_poisson_grad<F>>(o, y, w, d, L, B, q);              \
    }                                                                                                        \
    extern "C" void bce_elements_##S(const F* o, const F* y, F* term, F* grad, long long n) {                \
        for (long long i = 0; i < n; ++i) { term[i] = gpumlp_bce_term(o[i], y[i]); grad[i] = gpumlp_bce_grad(o[i], y[i]); } \
    }                                                                                                        \
    extern "C" void poisson_elements_##S(const F* o, const F* y, F* term, F* grad, long long n) {            \
        for (long long i = 0; i < n; ++i) {                                                                  \
            term[i] = gpumlp_poisson_term(o[i], y[i]);                                                       \
            grad[i] = gpumlp_poisson_grad(o[i], y[i]);                                                       \
        }                                                                                                    \
    }                                                                                                        \
    extern "C" void sgd_update_##S(F* t, const F* g, F* v, long long n, long long nd, F lr, F lam, F mu, int nes) { \
        sgd_update<F>(t, g, v, n, nd, lr, lam, mu, nes);                                                     \
    }                                                                                                        \
    extern "C" void adam_update_##S(F* t, const F* g, F* m, F* v, long long n, long long nd, F lr, F lam, F b1, \
                                    F b2, F eps, F c1, F c2, int dec) {                                      \
        adam_update<F>(t, g, m, v, n, nd, lr, lam, b1, b2, eps, c1, c2, dec);                                \
    }
HOST_LOOPS(float, f32)
HOST_LOOPS(double, f64)
"""


def _build_device_math(tmp_path_factory, name, flags=()):
    cxx = _host_compiler("the CUDA device math")
    d = tmp_path_factory.mktemp(name)
    (d / _kernels.MATH_HEADER).write_text(_kernels.source(_kernels.MATH_HEADER), encoding="utf-8")
    parts = [PRELUDE]
    for ctype, suffix, _ in CTYPE.values():
        parts += [elementwise_cpp(name, ctype, suffix) for name in sorted(_kernels.ELEMENTWISE)]
    parts.append(LOOPS)
    (d / "driver.cpp").write_text("\n".join(parts), encoding="utf-8")
    cmd = [*cxx, "-std=c++17", "-O2", "-fPIC", "-shared", "-Wall", *flags, "-I", str(d), str(d / "driver.cpp"),
           "-o", str(d / f"lib{name}.so")]
    res = _compile(cmd)
    assert res.returncode == 0, f"host compile of the device math failed:\n{res.stderr}"
    assert "warning" not in res.stderr, res.stderr
    return ctypes.CDLL(str(d / f"lib{name}.so"))


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    # -O2 without -ffast-math: IEEE semantics (NaN, inf, signed zeros), every operation rounded on its own
    # (-std=c++17 is an ISO mode: GCC contracts no a*b + c into an FMA) and subnormals kept: exactly
    # NumPy's arithmetic. The GPU differs in two ways, modelled by gpu_float_model below.
    return _build_device_math(tmp_path_factory, "gpumlp_host")


def _cpu_has_fma():
    import platform

    if platform.machine().lower() in ("aarch64", "arm64"):
        return True  # FMA is part of AArch64
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and " fma" in line for line in f)
    except OSError:
        return False


@pytest.fixture(scope="module")
def gpu_float_model(tmp_path_factory):
    """The device math built to do float arithmetic as CuPy has the GPU do it: a*b + c contracted into one
    FMA where the compiler sees fit (NVRTC's default --fmad=true; GCC's -ffp-contract=fast), and float32
    under flush-to-zero (CuPy's -ftz=true: subnormal inputs and results are zero). Returns the library and
    whether FMA contraction is in it (an x86-64 CPU without FMA instructions gets the flush alone)."""
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64", "aarch64", "arm64"):
        pytest.skip(f"the GPU arithmetic model flushes subnormals on x86-64 and AArch64 only, not {platform.machine()}")
    fma = _cpu_has_fma()
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    flags = ["-DGPUMLP_GPU_FLOAT_RULES", "-ffp-contract=fast"] + (["-mfma"] if fma and x86 else [])
    return types.SimpleNamespace(lib=_build_device_math(tmp_path_factory, "gpumlp_gpu_model", flags), fma=fma)


def ptr(a):
    return None if a is None else a.ctypes.data_as(ctypes.c_void_p)


def run_elementwise(lib, name, dtype, *arrays):
    """Call the host build of ElementwiseKernel ``name``; the last array is the output."""
    f = getattr(lib, f"{name}_{CTYPE[dtype][1]}")
    f.restype = None
    arrays = [np.ascontiguousarray(a, dtype=dtype) for a in arrays]
    f(*[ptr(a) for a in arrays], ctypes.c_longlong(arrays[0].size))
    return arrays[-1]


def assert_close(got, want, dtype, what):
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype == dtype, (got.dtype, want.dtype)
    np.testing.assert_allclose(got, want, rtol=RTOL[dtype], atol=ATOL[dtype], equal_nan=True, err_msg=what)


# Subnormal inputs (CuPy's -ftz=true reads float32 ones as ±0 on the GPU) and inputs where φ saturates:
# tanh and sigmoid within a few ulps of ±1 (1 − h² and h(1 − h) lose their digits to cancellation, and
# an FMA changes the rounding of 1 − h²), gelu where its tanh reaches ±1 (the amplified tail of gelu′).
SUBNORMAL = {np.float32: [1e-40, -1e-40, 1.4e-45, -1.4e-45, 1.1754942e-38, -1.1754942e-38],
             np.float64: [1e-310, -1e-310, 5e-324, -5e-324, 2.2250738585072e-308, -2.2250738585072e-308]}
SATURATING = {np.float32: [4, -4, 4.5, -4.5, 5.5, -5.5, 8, -8, 8.5, -8.5, 9, -9, 9.1, -9.1, 14, -14, 16, -16, 16.5,
                           -16.5, 17, -17],
              np.float64: [8, -8, 9, -9, 17, -17, 18, -18, 18.5, -18.5, 19, -19, 19.5, -19.5, 33, -33, 36, -36, 36.5,
                           -36.5, 37, -37, 38, -38]}


def edge_and_random(dtype, rng):
    edges = [0.0, -0.0, 1e-30, -1e-30, 1e-8, -1e-8, 0.5, -0.5, 1, -1, 3, -3, 5, -5, 10, -10, 20, -20, 40, -40,
             88, -88, 100, -100, 1e4, -1e4, 1e30, -1e30, np.inf, -np.inf, np.nan] + SUBNORMAL[dtype] + SATURATING[dtype]
    if dtype == np.float64:
        edges += [700, -700, 800, -800, 1e300, -1e300]
    return np.concatenate([np.array(edges), rng.standard_normal(500) * 3, rng.standard_normal(200) * 50]).astype(dtype)


DTYPES = [np.float32, np.float64]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", _kernels.ACTIVATIONS)
def test_activation_forward_and_backward_match_functions(lib, activation, dtype):
    rng = np.random.default_rng(0)
    z = edge_and_random(dtype, rng)
    with np.errstate(all="ignore"):  # the reference overflows (z³ at 1e30) exactly as the kernel does
        h_ref = F.ACTIVATIONS[activation].forward(z)
        h = run_elementwise(lib, f"gpumlp_{activation}_forward", dtype, z, np.full_like(z, np.nan))
        assert_close(h, h_ref, dtype, f"{activation} forward")
        for dh in (np.ones_like(z), rng.standard_normal(z.size).astype(dtype)):  # φ′ itself, then dh ⊙ φ′
            dz_ref = F.ACTIVATIONS[activation].backward(dh, z, h_ref)
            dz = run_elementwise(lib, f"gpumlp_{activation}_backward", dtype, dh, z, h_ref, np.full_like(z, np.nan))
            assert_close(dz, dz_ref, dtype, f"{activation} backward")


def flush_subnormals(a):
    """What CuPy's -ftz=true makes of float32 values on the GPU: subnormals (|a| < FLT_MIN) are ±0, the sign
    kept; float64 is left as it is."""
    a = np.array(a)
    if a.dtype == np.float32:
        sub = np.abs(a) < np.finfo(np.float32).tiny  # NaN compares False: kept
        a[sub] = np.copysign(np.float32(0), a[sub])
    return a


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", _kernels.ACTIVATIONS)
def test_activation_kernels_under_the_gpus_float_rules(gpu_float_model, activation, dtype):
    """The test above, on the device math built to do arithmetic as the GPU does (gpu_float_model: FMA
    contraction; float32 flushed to zero), against the reference evaluated at the inputs as the GPU sees
    them (float32 subnormals as ±0), with the same tolerances, because:
    - a flushed subnormal is ±0 to the kernel: relu′ and leaky_relu′ of a subnormal z are φ′(0) (0 and the
      slope, not 1: no tolerance could cover that, the flushed reference has it exactly), and results below
      FLT_MIN become ±0, off by less than 1.2e-38, far inside ATOL;
    - an FMA rounds 1 − h² once where NumPy rounds h² first: they differ by at most half an ulp of h²,
      2⁻²⁵·|dh| (float32) or 2⁻⁵⁴·|dh| (float64), inside ATOL for |dh| up to ~100 (here ≲ 5). In gelu′ the
      same half ulp of t² is multiplied by |½ z K (1 + 3C z²)| ≲ 10 in the float32 tail (≲ 50 in float64):
      ≲ 3e-7 (float32) and 3e-15 (float64) absolute, inside ATOL too. tests/test_gpu.py compares the GPU's
      results the same way, with the same tolerances."""
    model = gpu_float_model.lib
    rng = np.random.default_rng(0)
    z = edge_and_random(dtype, rng)
    with np.errstate(all="ignore"):
        h_in = F.ACTIVATIONS[activation].forward(z)  # the h a step hands to φ′ (its own φ(z), here NumPy's)
        h_ref = F.ACTIVATIONS[activation].forward(flush_subnormals(z))
        h = run_elementwise(model, f"gpumlp_{activation}_forward", dtype, z, np.full_like(z, np.nan))
        assert_close(h, h_ref, dtype, f"{activation} forward, GPU float rules")
        for dh in (np.ones_like(z), rng.standard_normal(z.size).astype(dtype)):
            dz_ref = F.ACTIVATIONS[activation].backward(dh, flush_subnormals(z), flush_subnormals(h_in))
            dz = run_elementwise(model, f"gpumlp_{activation}_backward", dtype, dh, z, h_in, np.full_like(z, np.nan))
            assert_close(dz, dz_ref, dtype, f"{activation} backward, GPU float rules")


def test_the_gpu_float_model_flushes_and_fuses_where_the_host_build_does_not(lib, gpu_float_model):
    """The model is not the host build under another name: relu′ and leaky_relu′ of float32 subnormals
    are φ′(0) there and 1 in the host build (float64 subnormals are not flushed in either), and where an
    FMA rounds 1 − h² differently from NumPy's two roundings, the model's tanh′ is the FMA's value."""
    from fractions import Fraction

    def grad(library, act, z, h=None):
        z = np.asarray(z)
        return run_elementwise(library, f"gpumlp_{act}_backward", z.dtype.type, np.ones_like(z), z,
                               z if h is None else h, np.empty_like(z))

    sub32, sub64 = np.array([1e-40, -1e-40, 1.4e-45], np.float32), np.array([1e-310, 5e-324], np.float64)
    slope = np.float32(F.LEAKY_SLOPE)
    np.testing.assert_array_equal(grad(lib, "relu", sub32), [1, 0, 1])
    np.testing.assert_array_equal(grad(gpu_float_model.lib, "relu", sub32), [0, 0, 0])
    np.testing.assert_array_equal(grad(lib, "leaky_relu", sub32), [1, slope, 1])
    np.testing.assert_array_equal(grad(gpu_float_model.lib, "leaky_relu", sub32), [slope, slope, slope])
    np.testing.assert_array_equal(grad(gpu_float_model.lib, "relu", sub64), [1, 1])
    if not gpu_float_model.fma:
        pytest.skip("this x86-64 CPU has no FMA instructions: the model flushes but cannot fuse")
    for dtype, ulp in ((np.float32, 2.0**-24), (np.float64, 2.0**-53)):
        h = (1 - ulp * np.arange(1, 200)).astype(dtype)  # just below 1: where 1 − h² cancels
        two_roundings = (dtype(1) - h * h).astype(dtype)  # NumPy: h² rounded, then the difference
        one_rounding = np.array([float(1 - Fraction(float(v)) ** 2) for v in h]).astype(dtype)  # exact, rounded once
        differ = one_rounding != two_roundings
        assert differ.sum() > 10, f"{dtype.__name__}: too few inputs where the roundings differ"
        np.testing.assert_array_equal(grad(lib, "tanh", h, h), two_roundings)
        np.testing.assert_array_equal(grad(gpu_float_model.lib, "tanh", h, h), one_rounding)


@pytest.mark.parametrize("dtype", DTYPES)
def test_derivatives_at_the_kinks_are_exactly_as_documented(lib, dtype):
    z = np.array([-1.0, 0.0, 1.0], dtype)
    ones = np.ones_like(z)

    def grad(a):
        return run_elementwise(lib, f"gpumlp_{a}_backward", dtype, ones, z, F.ACTIVATIONS[a].forward(z), np.empty_like(z))

    np.testing.assert_array_equal(grad("relu"), [0, 0, 1])  # φ′(0) = 0, as PyTorch
    np.testing.assert_array_equal(grad("leaky_relu"), np.array([F.LEAKY_SLOPE, F.LEAKY_SLOPE, 1], dtype))
    np.testing.assert_array_equal(run_elementwise(lib, "gpumlp_relu_forward", dtype, z, np.empty_like(z)), [0, 0, 1])
    # sigmoid′(0) = 1/4, tanh′(0) = 1, gelu′(0) = 1/2, softplus′(0) = 1/2, softplus(0) = log 2
    assert grad("sigmoid")[1] == 0.25 and grad("tanh")[1] == 1 and grad("gelu")[1] == 0.5
    assert grad("softplus")[1] == 0.5
    sp0 = run_elementwise(lib, "gpumlp_softplus_forward", dtype, z, np.empty_like(z))[1]
    assert sp0 == dtype(np.log(2.0))


@pytest.mark.parametrize("dtype", DTYPES)
def test_stable_formulas_stay_finite_where_naive_ones_overflow(lib, dtype):
    z = np.array([-1e4, -100, 100, 1e4], dtype)
    sig = run_elementwise(lib, "gpumlp_sigmoid_forward", dtype, z, np.empty_like(z))
    sp = run_elementwise(lib, "gpumlp_softplus_forward", dtype, z, np.empty_like(z))
    assert np.isfinite(sig).all() and np.isfinite(sp).all()
    assert sig[-1] == 1 and sig[0] == 0 and sp[-1] == dtype(1e4) and sp[0] == 0


def _loss_args(lib, loss, dtype, B, q):
    f = getattr(lib, f"{loss}_{CTYPE[dtype][1]}")
    f.restype = None
    return f


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("scale", [1.0, 1e4])  # 1e4: exp of the raw logits overflows, the max-shift must not
def test_cross_entropy_rows_match_functions(lib, dtype, weighted, scale):
    rng = np.random.default_rng(1)
    B, q = 37, 11
    o = (rng.standard_normal((B, q)) * scale).astype(dtype)
    o[0, :] = o[0, 0]  # a row of ties
    y = rng.integers(0, q, B).astype(np.int64)
    w = rng.uniform(0.1, 2.0, B).astype(dtype) if weighted else None
    do, L = np.full((B, q), np.nan, dtype), np.full((), np.nan, dtype)
    f = _loss_args(lib, "cross_entropy", dtype, B, q)
    f(ptr(o), ptr(y), ptr(w), ptr(do), ptr(L), ctypes.c_int(B), ctypes.c_int(q))
    L_ref = F.cross_entropy_forward(o, y, w)
    assert np.isfinite(L) and np.isfinite(do).all()
    assert_close(L, np.asarray(L_ref, dtype), dtype, "cross-entropy L")
    assert_close(do, F.cross_entropy_backward(o, y, w), dtype, "cross-entropy dL/do")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weighted", [False, True])
def test_squared_rows_match_functions(lib, dtype, weighted):
    rng = np.random.default_rng(2)
    B, q = 29, 3
    o, y = rng.standard_normal((B, q)).astype(dtype), rng.standard_normal((B, q)).astype(dtype)
    w = rng.uniform(0.1, 2.0, B).astype(dtype) if weighted else None
    do, L = np.full((B, q), np.nan, dtype), np.full((), np.nan, dtype)
    f = _loss_args(lib, "squared", dtype, B, q)
    f(ptr(o), ptr(y), ptr(w), ptr(do), ptr(L), ctypes.c_int(B), ctypes.c_int(q))
    assert_close(L, np.asarray(F.squared_forward(o, y, w), dtype), dtype, "squared L")
    assert_close(do, F.squared_backward(o, y, w), dtype, "squared dL/do")


def loss_targets(loss, rng, shape, dtype):
    """Targets of each loss: labels (cross-entropy), reals (squared), 0/1 with some probabilities in
    between (binary cross-entropy: soft labels are allowed), counts with zeros (Poisson)."""
    if loss == "cross_entropy":
        return rng.integers(0, shape[1], shape[0]).astype(np.int64)
    if loss == "squared":
        return rng.standard_normal(shape).astype(dtype)
    if loss == "binary_cross_entropy":
        y = rng.integers(0, 2, shape).astype(dtype)
        y.flat[::7] = 0.25
        return y
    y = rng.poisson(2.0, shape).astype(dtype)
    y.flat[::5] += 0.5  # rates, not only counts
    return y


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("loss", ["binary_cross_entropy", "poisson"])
def test_pointwise_loss_rows_match_functions(lib, loss, dtype, weighted):
    rng = np.random.default_rng(4)
    B, q = 31, 5
    o = (rng.standard_normal((B, q)) * 3).astype(dtype)
    o[0] = [-40, -20, 0, 20, 40] if loss == "binary_cross_entropy" else [-40, -20, 0, 5, 20]  # saturated units
    y = loss_targets(loss, rng, (B, q), dtype)
    w = rng.uniform(0.1, 2.0, B).astype(dtype) if weighted else None
    do, L = np.full((B, q), np.nan, dtype), np.full((), np.nan, dtype)
    _loss_args(lib, loss, dtype, B, q)(ptr(o), ptr(y), ptr(w), ptr(do), ptr(L), ctypes.c_int(B), ctypes.c_int(q))
    assert np.isfinite(L) and np.isfinite(do).all()
    assert_close(L, np.asarray(F.LOSSES[loss].forward(o, y, w), dtype), dtype, f"{loss} L")
    assert_close(do, F.LOSSES[loss].backward(o, y, w), dtype, f"{loss} dL/do")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("loss", ["binary_cross_entropy", "poisson"])
def test_pointwise_loss_terms_at_the_edges_match_functions(lib, loss, dtype):
    """Each element's term and ∂l/∂o (the __device__ functions themselves) against functions.py, one
    element per row: the edge inputs (±1e30, ±inf, NaN, the overflow thresholds of exp) for each target."""
    o = np.repeat(edge_and_random(dtype, np.random.default_rng(5)), 3)
    y = np.tile(np.array([0.0, 1.0, 0.25] if loss == "binary_cross_entropy" else [0.0, 0.5, 3.0], dtype), o.size // 3)
    term, grad = np.full_like(o, np.nan), np.full_like(o, np.nan)
    f = getattr(lib, f"{'bce' if loss == 'binary_cross_entropy' else loss}_elements_{CTYPE[dtype][1]}")
    f.restype = None
    f(ptr(o), ptr(y), ptr(term), ptr(grad), ctypes.c_longlong(o.size))
    with np.errstate(all="ignore"):  # inf − inf and 0·inf are NaN on both sides
        want_term = np.array([F.LOSSES[loss].forward(o[i:i + 1, None], y[i:i + 1, None]) for i in range(o.size)], dtype)
        want_grad = np.concatenate([F.LOSSES[loss].backward(o[i:i + 1, None], y[i:i + 1, None])[0] for i in range(o.size)])
    assert_close(term, want_term, dtype, f"{loss} term")
    assert_close(grad, want_grad, dtype, f"{loss} dl/do")
    big = np.abs(o) == dtype(1e4)
    if loss == "binary_cross_entropy":  # softplus(o) − y·o: finite for logits of any finite size
        assert np.isfinite(term[big]).all() and np.isfinite(grad[big]).all()


OPTIMIZERS = [
    ("sgd", {}),
    ("sgd", {"momentum": 0.9}),
    ("sgd", {"momentum": 0.9, "nesterov": True}),
    ("adam", {}),
    ("adam", {"decoupled": True}),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,kw", OPTIMIZERS, ids=[f"{n}-{'-'.join(k) or 'plain'}" for n, k in OPTIMIZERS])
def test_update_rules_match_optim(lib, name, kw, dtype):
    """Three steps over a flat θ whose first n_decay elements are weights (λ applies), the rest biases."""
    rng = np.random.default_rng(3)
    n, n_decay, lr, lam = 60, 45, 0.05, 0.1
    theta0 = rng.standard_normal(n).astype(dtype)
    grads = [rng.standard_normal(n).astype(dtype) for _ in range(3)]
    ref = optim.make_optimizer(name, **kw)
    theta_ref = theta0.copy()
    ours = theta0.copy()
    state = [np.zeros(n, dtype), np.zeros(n, dtype)]  # velocity, or m and v
    s = CTYPE[dtype][2]
    for t, g in enumerate(grads, start=1):
        ref.update(theta_ref, g.copy(), lr, lam, n_decay)  # the NumPy reference (ops=None)
        if name == "sgd":
            f = getattr(lib, f"sgd_update_{CTYPE[dtype][1]}")
            f.restype = None
            velocity = state[0] if ref.momentum else None
            f(ptr(ours), ptr(g), ptr(velocity), ctypes.c_longlong(n), ctypes.c_longlong(n_decay), s(lr), s(lam),
              s(ref.momentum), ctypes.c_int(ref.nesterov))
        else:
            f = getattr(lib, f"adam_update_{CTYPE[dtype][1]}")
            f.restype = None
            c1, c2 = 1 - ref.beta1**t, 1 - ref.beta2**t
            f(ptr(ours), ptr(g), ptr(state[0]), ptr(state[1]), ctypes.c_longlong(n), ctypes.c_longlong(n_decay),
              s(lr), s(lam), s(ref.beta1), s(ref.beta2), s(ref.eps), s(c1), s(c2), ctypes.c_int(ref.decoupled))
        assert_close(ours, theta_ref, dtype, f"{name} {kw} step {t}")
    if name == "sgd" and ref.momentum:
        assert_close(state[0], ref.velocity, dtype, "velocity")
    if name == "adam":
        assert_close(state[0], ref.m, dtype, "m")
        assert_close(state[1], ref.v, dtype, "v")
    assert not np.array_equal(ours, theta0)


def test_harness_detects_a_wrong_formula(lib):
    # The comparison is not vacuous: sigmoid's φ′ evaluated at the wrong argument is caught.
    z = np.linspace(-3, 3, 7)
    h = F.sigmoid_forward(z)
    wrong = run_elementwise(lib, "gpumlp_sigmoid_backward", np.float64, np.ones_like(z), z, z, np.empty_like(z))
    with pytest.raises(AssertionError):
        assert_close(wrong, F.sigmoid_backward(np.ones_like(z), z, h), np.float64, "sigmoid")


# =====================================================================================================
# The RawKernels themselves (kernels/*.cu), run on the host: each CUDA thread a fiber (ucontext), blocks
# one after another (in a given order), __syncthreads and the warp shuffles as barriers between fibers,
# __shared__ as static storage (one block runs at a time). So CI executes the .cu files' indexing,
# grid-stride loops, warp/block reductions and the last-block grid sum, not only their scalar math.
# =====================================================================================================
EMULATION = r"""
#include <math.h>
#include <ucontext.h>
#include <functional>
#include <vector>

// CUDA threads as cooperative fibers (ucontext) on one OS thread: a thread runs until it waits at a
// barrier, then the next one runs; cheap enough to run a few thousand CUDA threads per test.
struct gpumlp_dim3 { unsigned int x, y, z; };
static gpumlp_dim3 threadIdx, blockIdx, blockDim, gridDim;

struct Fiber { ucontext_t ctx; std::vector<char> stack; bool done; };
static ucontext_t scheduler;
static std::vector<Fiber> fibers;
static int current;
static std::function<void()> kernel_body;

static void yield_to_scheduler() { swapcontext(&fibers[current].ctx, &scheduler); }

struct Barrier {  // n fibers meet; the generation count tells one round from the next
    int n, count = 0;
    long gen = 0;
    explicit Barrier(int n_) : n(n_) {}
    void wait() {
        const long g = gen;
        if (++count == n) { count = 0; ++gen; return; }
        while (gen == g) yield_to_scheduler();
    }
};
static std::vector<Barrier> block_barrier, warp_barriers;
static double shfl_slots[1024];

#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
inline void __syncthreads() { block_barrier[0].wait(); }
inline void __threadfence() {}
inline unsigned int atomicAdd(unsigned int* p, unsigned int v) { const unsigned int old = *p; *p = old + v; return old; }
template <typename F> F __shfl_xor_sync(unsigned int, F v, int lane_mask) {
    const int t = threadIdx.x, warp = t >> 5;
    shfl_slots[t] = (double)v;  // exact for float and double
    warp_barriers[warp].wait();
    const F other = (F)shfl_slots[(warp << 5) | ((t & 31) ^ lane_mask)];
    warp_barriers[warp].wait();
    return other;
}

// The order in which a block's threads are first run and then resumed after each barrier: 0 by index,
// 1 from the last thread down (a thread that reads __shared__ data before the barrier that publishes it
// then sees stale data, as it may on a GPU; in index order thread 0 would always have run first).
static int reverse_threads = 0;
extern "C" void set_thread_order(int reverse) { reverse_threads = reverse; }

static void fiber_main() {
    kernel_body();
    fibers[current].done = true;  // then uc_link returns to the scheduler
}

// Run fn as a grid of `grid` blocks of `block` threads; blocks in the order given (a permutation).
template <typename Fn> static void launch(unsigned int grid, unsigned int block, const int* order, Fn fn) {
    gridDim = {grid, 1, 1};
    blockDim = {block, 1, 1};
    kernel_body = fn;
    fibers.resize(block);
    for (unsigned int k = 0; k < grid; ++k) {
        blockIdx = {(unsigned int)order[k], 0, 0};
        block_barrier.assign(1, Barrier((int)block));
        warp_barriers.assign(block / 32, Barrier(32));
        for (unsigned int t = 0; t < block; ++t) {
            Fiber& f = fibers[t];
            f.stack.resize(1 << 16);
            f.done = false;
            getcontext(&f.ctx);
            f.ctx.uc_stack.ss_sp = f.stack.data();
            f.ctx.uc_stack.ss_size = f.stack.size();
            f.ctx.uc_link = &scheduler;
            makecontext(&f.ctx, fiber_main, 0);
        }
        for (bool running = true; running;) {  // round-robin until every thread of the block is done
            running = false;
            for (unsigned int k = 0; k < block; ++k) {
                const unsigned int t = reverse_threads ? block - 1 - k : k;
                if (fibers[t].done) continue;
                current = (int)t;
                threadIdx = {t, 0, 0};
                swapcontext(&scheduler, &fibers[t].ctx);
                running = running || !fibers[t].done;
            }
        }
    }
}
"""

LAUNCHERS = r"""
#define LAUNCHERS(F, S)                                                                                       \
    extern "C" void run_cross_entropy_##S(unsigned g, unsigned b, const int* order, const F* o,                \
                                          const long long* y, const F* w, const F* wsum, F* d, F* L, F* part,  \
                                          unsigned* counter, int B, int q) {                                   \
        launch(g, b, order, [&] { gpumlp_cross_entropy_##S(o, y, w, wsum, d, L, part, counter, B, q); });     \
    }                                                                                                          \
    extern "C" void run_squared_##S(unsigned g, unsigned b, const int* order, const F* o, const F* y,           \
                                    const F* w, const F* wsum, F* d, F* L, F* part, unsigned* counter, int B,  \
                                    int q) {                                                                   \
        launch(g, b, order, [&] { gpumlp_squared_##S(o, y, w, wsum, d, L, part, counter, B, q); });           \
    }                                                                                                          \
    extern "C" void run_binary_cross_entropy_##S(unsigned g, unsigned b, const int* order, const F* o,         \
                                                 const F* y, const F* w, const F* wsum, F* d, F* L, F* part,   \
                                                 unsigned* counter, int B, int q) {                            \
        launch(g, b, order, [&] { gpumlp_binary_cross_entropy_##S(o, y, w, wsum, d, L, part, counter, B, q); }); \
    }                                                                                                          \
    extern "C" void run_poisson_##S(unsigned g, unsigned b, const int* order, const F* o, const F* y,           \
                                    const F* w, const F* wsum, F* d, F* L, F* part, unsigned* counter, int B,  \
                                    int q) {                                                                   \
        launch(g, b, order, [&] { gpumlp_poisson_##S(o, y, w, wsum, d, L, part, counter, B, q); });           \
    }                                                                                                          \
    extern "C" void run_sum_##S(unsigned g, unsigned b, const int* order, const F* a, long long n, int square, \
                                F* out, F* part, unsigned* counter) {                                          \
        launch(g, b, order, [&] { gpumlp_sum_##S(a, n, square, out, part, counter); });                       \
    }                                                                                                          \
    extern "C" void run_sgd_update_##S(unsigned g, unsigned b, const int* order, F* t, const F* gr, F* v,       \
                                       long long n, long long nd, F lr, F lam, F mu, int nes) {                \
        launch(g, b, order, [&] { gpumlp_sgd_update_##S(t, gr, v, n, nd, lr, lam, mu, nes); });              \
    }                                                                                                          \
    extern "C" void run_adam_update_##S(unsigned g, unsigned b, const int* order, F* t, const F* gr, F* m,      \
                                        F* v, long long* step, long long n, long long nd, F lr, F lam,         \
                                        double b1, double b2, F eps, int dec, unsigned* done) {                \
        launch(g, b, order, [&] { gpumlp_adam_update_##S(t, gr, m, v, step, n, nd, lr, lam, b1, b2, eps, dec,  \
                                                         done); });                                            \
    }
LAUNCHERS(float, f32)
LAUNCHERS(double, f64)
"""


@pytest.fixture(scope="module")
def grid_lib(tmp_path_factory):
    cxx = _host_compiler("the CUDA kernels")
    assert sorted(_kernels.RAW_KERNELS) == ["loss.cu", "optim.cu", "reduce.cu"], "new .cu file: add launchers"
    d = tmp_path_factory.mktemp("kernels_grid")
    # Our .cu files as CuPy gets them (headers inlined; their include guards let them share one unit).
    src = "\n".join([EMULATION] + [_kernels.module_source(cu) for cu in sorted(_kernels.RAW_KERNELS)] + [LAUNCHERS])
    (d / "grid.cpp").write_text(src, encoding="utf-8")
    cmd = [*cxx, "-std=c++17", "-O0", "-fPIC", "-shared", "-Wall", str(d / "grid.cpp"),
           "-o", str(d / "libgpumlp_grid.so")]
    res = _compile(cmd)
    assert res.returncode == 0, f"host compile of kernels/*.cu failed:\n{res.stderr}"
    return ctypes.CDLL(str(d / "libgpumlp_grid.so"))


class Grid:
    """Launch a host-emulated kernel: ``Grid(lib, dtype)("sum", grid, block, reverse, *args)``."""

    def __init__(self, lib, dtype):
        self.lib, self.dtype, self.suffix, self.scalar = lib, dtype, CTYPE[dtype][1], CTYPE[dtype][2]

    def __call__(self, kernel, grid, block, reverse, *args):
        f = getattr(self.lib, f"run_{kernel}_{self.suffix}")
        f.restype = None
        order = np.arange(grid, dtype=np.int32)[::-1 if reverse else 1].copy()
        conv = []
        for a in args:
            if a is None or isinstance(a, np.ndarray):
                conv.append(ptr(a))
            elif isinstance(a, (float, np.floating)):
                conv.append(self.scalar(a))
            else:
                conv.append(a)  # ctypes integers, typed by the caller
        f(ctypes.c_uint(grid), ctypes.c_uint(block), ptr(order), *conv)


# (loss, q, weighted, dtype, grid or None for CupyOps' choice, block, blocks in reverse order)
LOSS_LAUNCHES = [
    ("cross_entropy", 40, False, np.float32, None, 64, False),  # 40 > 32: lanes loop over the columns
    ("cross_entropy", 40, True, np.float64, None, 64, True),
    ("cross_entropy", 3, True, np.float32, 2, 32, True),  # fewer blocks than rows/warps: grid-stride loop
    ("cross_entropy", 1, False, np.float64, None, 256, False),  # CupyOps' block size; q = 1
    ("squared", 40, True, np.float32, None, 64, True),
    ("squared", 3, False, np.float64, 2, 32, False),
    ("squared", 1, True, np.float64, None, 256, True),
    ("cross_entropy", 45, True, np.float32, None, 256, False),
    ("squared", 45, False, np.float32, 3, 64, True),
    ("binary_cross_entropy", 1, False, np.float64, None, 256, False),  # q = 1: a binary problem
    ("binary_cross_entropy", 40, True, np.float32, None, 64, True),  # multilabel, lanes loop
    ("binary_cross_entropy", 3, True, np.float64, 2, 32, False),
    ("poisson", 1, True, np.float32, None, 256, True),
    ("poisson", 40, False, np.float64, 3, 64, False),
]
LAUNCH_SHAPES = [(None, 64, False), (3, 32, True)]  # (grid or natural, block, reverse order)


@pytest.mark.parametrize("loss,q,weighted,dtype,grid,block,reverse", LOSS_LAUNCHES)
def test_loss_kernels_run_on_the_host(grid_lib, loss, q, weighted, dtype, grid, block, reverse):
    from gpumlp._cupy_ops import MAX_BLOCKS

    run = Grid(grid_lib, dtype)
    rng = np.random.default_rng(q)
    B = 37
    o = (rng.standard_normal((B, q)) * (1 if loss == "poisson" else 5)).astype(dtype)
    o[0] += -50 if loss == "poisson" else 1e4  # a row of huge logits (Poisson: of means that underflow to 0)
    y = loss_targets(loss, rng, (B, q), dtype)
    w = rng.uniform(0.1, 2.0, B).astype(dtype) if weighted else None
    if grid is None:  # as CupyOps launches it: one warp per row
        grid = max(1, min(-(-B // (block // 32)), MAX_BLOCKS))
    partial, counter = np.full(max(grid, 4), np.nan, dtype), np.zeros(1, np.uint32)
    wsum = np.full((), np.nan, dtype)
    if w is not None:  # Σw first, on the "device", as CupyOps does
        run("sum", 2, 32, reverse, w, ctypes.c_longlong(B), ctypes.c_int(0), wsum, partial, counter)
        assert_close(wsum, np.asarray(w.sum(), dtype), dtype, "Σw")
    do, L = np.full((B, q), np.nan, dtype), np.full((), np.nan, dtype)
    L_ref, do_ref = F.LOSSES[loss].forward(o, y, w), F.LOSSES[loss].backward(o, y, w)
    for _ in range(2):  # the second launch must see the counter reset by the first
        run(loss, grid, block, reverse, o, y, w, None if w is None else wsum, do, L, partial, counter,
            ctypes.c_int(B), ctypes.c_int(q))
        assert counter[0] == 0
        assert_close(L, np.asarray(L_ref, dtype), dtype, f"{loss} L")
        assert_close(do, do_ref, dtype, f"{loss} dL/do")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("loss", ["cross_entropy", "squared", "binary_cross_entropy", "poisson"])
def test_loss_kernels_give_zero_for_a_batch_of_zero_weights(grid_lib, loss, dtype):
    """Σw = 0 (a shuffled batch of zero-weight examples): L = 0 and ∂L/∂o = 0 as NumPy's loss_grad,
    not w/Σw = 0/0 = NaN, which fit would report as divergence on the GPU only."""
    run = Grid(grid_lib, dtype)
    rng = np.random.default_rng(8)
    B, q, block = 19, 5, 64
    o = rng.standard_normal((B, q)).astype(dtype)
    y = loss_targets(loss, rng, (B, q), dtype)
    w = np.zeros(B, dtype)
    grid = -(-B // (block // 32))
    partial, counter = np.full(grid, np.nan, dtype), np.zeros(1, np.uint32)
    wsum, do, L = np.full((), np.nan, dtype), np.full((B, q), np.nan, dtype), np.full((), np.nan, dtype)
    run("sum", 1, 32, False, w, ctypes.c_longlong(B), ctypes.c_int(0), wsum, partial, counter)
    run(loss, grid, block, False, o, y, w, wsum, do, L, partial, counter, ctypes.c_int(B), ctypes.c_int(q))
    assert L == 0 and (do == 0).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("grid,block,reverse", LAUNCH_SHAPES)
def test_sum_kernel_runs_on_the_host(grid_lib, dtype, grid, block, reverse):
    run = Grid(grid_lib, dtype)
    a = np.random.default_rng(5).standard_normal(1001).astype(dtype)
    grid = grid or -(-a.size // block)
    partial, counter, out = np.full(grid, np.nan, dtype), np.zeros(1, np.uint32), np.full((), np.nan, dtype)
    for square, want in ((1, np.dot(a, a)), (0, a.sum())):
        run("sum", grid, block, reverse, a, ctypes.c_longlong(a.size), ctypes.c_int(square), out, partial, counter)
        assert counter[0] == 0
        assert_close(out, np.asarray(want, dtype), dtype, f"square={square}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,kw", OPTIMIZERS, ids=[f"{n}-{'-'.join(k) or 'plain'}" for n, k in OPTIMIZERS])
def test_update_kernels_run_on_the_host(grid_lib, name, kw, dtype):
    """Two blocks of 32 threads over 200 parameters: the grid-stride loop covers every element once.
    Adam's step counter lives in device memory: every block must use the count from before the launch
    (blocks run one after another here, in both orders, so a block that stored the new count early
    would hand a later block the wrong bias corrections), and it must advance by one per launch."""
    run = Grid(grid_lib, dtype)
    rng = np.random.default_rng(6)
    n, n_decay, lr, lam = 200, 150, 0.05, 0.1
    theta = rng.standard_normal(n).astype(dtype)
    ref, ours = optim.make_optimizer(name, **kw), theta.copy()
    s1, s2 = np.zeros(n, dtype), np.zeros(n, dtype)
    step, done = np.zeros(1, np.int64), np.zeros(1, np.uint32)
    for t in range(1, 4):
        g = rng.standard_normal(n).astype(dtype)
        ref.update(theta, g.copy(), lr, lam, n_decay)
        if name == "sgd":
            run("sgd_update", 2, 32, t % 2 == 0, ours, g, s1 if ref.momentum else None, ctypes.c_longlong(n),
                ctypes.c_longlong(n_decay), lr, lam, float(ref.momentum), ctypes.c_int(ref.nesterov))
        else:
            run("adam_update", 2, 32, t % 2 == 0, ours, g, s1, s2, step, ctypes.c_longlong(n),
                ctypes.c_longlong(n_decay), lr, lam, ctypes.c_double(ref.beta1), ctypes.c_double(ref.beta2), ref.eps,
                ctypes.c_int(ref.decoupled), done)
            assert step[0] == t and done[0] == 0  # stored by the last block, which reset the block count
        assert_close(ours, theta, dtype, f"{name} {kw} step {t}")
    if name == "adam":
        assert ref.t == 3


@pytest.mark.parametrize("reverse", [False, True])
def test_the_adam_kernel_resumes_from_the_step_count_in_device_memory(grid_lib, reverse):
    """Started at a stored count of 41 (a resumed run), the kernel applies the corrections of step 42."""
    run = Grid(grid_lib, np.float64)
    rng = np.random.default_rng(7)
    n = 100
    theta, g = rng.standard_normal(n), rng.standard_normal(n)
    m, v = rng.standard_normal(n) * 0.1, rng.uniform(0, 0.1, n)
    ref = optim.make_optimizer("adam")
    ref.load_state(41, {"m": m.copy(), "v": v.copy()})
    want = theta.copy()
    ref.update(want, g.copy(), 0.01, 0.0, n)
    step, done = np.array([41], np.int64), np.zeros(1, np.uint32)
    run("adam_update", 3, 32, reverse, theta, g, m, v, step, ctypes.c_longlong(n), ctypes.c_longlong(n), 0.01, 0.0,
        ctypes.c_double(0.9), ctypes.c_double(0.999), 1e-8, ctypes.c_int(0), done)
    assert step[0] == 42 and ref.t == 42
    assert_close(theta, want, np.float64, "θ at step 42")


@pytest.fixture
def thread_order(grid_lib):
    """Set the emulated threads' order within a block (reverse: the last thread runs first); reset after."""
    grid_lib.set_thread_order.restype = None
    yield lambda reverse: grid_lib.set_thread_order(ctypes.c_int(int(reverse)))
    grid_lib.set_thread_order(ctypes.c_int(0))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reverse_blocks", [False, True], ids=["blocks-forward", "blocks-reversed"])
@pytest.mark.parametrize("reverse_threads", [False, True], ids=["threads-forward", "threads-reversed"])
def test_the_adam_kernel_applies_the_numpy_twins_bias_corrections_bit_for_bit(lib, grid_lib, thread_order, dtype,
                                                                            reverse_blocks, reverse_threads):
    """Thread 0 of each block computes c1 = 1 − β1ᵗ, c2 = 1 − β2ᵗ (two double pow) and shares them through
    shared memory: every thread of every block must apply exactly the values of ops.adam_corrections.
    Checked bit for bit against the host loop over the same gpumlp_adam, fed with those values cast to
    the dtype, for step counts from the first to where β2ᵗ underflows, three launches each (a thread that
    read the shared values before thread 0 wrote them would see zeros or the previous launch's), with the
    blocks and the threads of each block run in either order."""
    from gpumlp.ops import adam_corrections

    run, suffix, s = Grid(grid_lib, dtype), CTYPE[dtype][1], CTYPE[dtype][2]
    host = getattr(lib, f"adam_update_{suffix}")
    host.restype = None
    thread_order(reverse_threads)
    rng = np.random.default_rng(13)
    n, n_decay, lr, lam, beta1, beta2, eps = 500, 350, 1e-3, 1e-2, 0.9, 0.999, 1e-8
    for start in (0, 1, 41, 999, 10**6, 2**40):
        theta = rng.standard_normal(n).astype(dtype)
        m, v = (rng.standard_normal(n) * 0.1).astype(dtype), rng.uniform(0, 0.1, n).astype(dtype)
        ours, m_ours, v_ours = theta.copy(), m.copy(), v.copy()
        step, twin_step, done = np.array([start], np.int64), np.array([start], np.int64), np.zeros(1, np.uint32)
        for _ in range(3):
            g = rng.standard_normal(n).astype(dtype)
            c1, c2 = adam_corrections(twin_step, beta1, beta2)  # the NumPy twin: t = step + 1, in double
            host(ptr(theta), ptr(g), ptr(m), ptr(v), ctypes.c_longlong(n), ctypes.c_longlong(n_decay), s(lr), s(lam),
                 s(beta1), s(beta2), s(eps), s(c1), s(c2), ctypes.c_int(0))
            run("adam_update", 3, 64, reverse_blocks, ours, g, m_ours, v_ours, step, ctypes.c_longlong(n),
                ctypes.c_longlong(n_decay), lr, lam, ctypes.c_double(beta1), ctypes.c_double(beta2), eps,
                ctypes.c_int(0), done)
            assert step[0] == twin_step[0] and done[0] == 0
            for got, want, what in ((ours, theta, "θ"), (m_ours, m, "m"), (v_ours, v, "v")):
                np.testing.assert_array_equal(got, want, err_msg=f"{what} at step {step[0]}, {dtype.__name__}")


# =====================================================================================================
# gpumlp/_cupy_ops.py itself, on a host stand-in for CuPy (tests/cupy_standin.py): device arrays are NumPy
# memory that refuses to mix with NumPy arrays as real CuPy does, cuBLAS calls are NumPy products with
# the same alpha/beta/transpose meaning, ElementwiseKernels run the host build of
# their operation strings (``lib``) and RawKernels run kernels/*.cu under the emulation above
# (``grid_lib``), called with exactly the argument tuples CupyOps passes, converted by type as CuPy
# does (arrays → pointers, None → NULL, NumPy scalars by value in their own C type). So CI executes
# CupyOps' launch code — argument order and types, grid sizes, buffers — inside real training steps.
# =====================================================================================================
class _HostRawKernel:
    SCALARS = {np.dtype(np.float32): ctypes.c_float, np.dtype(np.float64): ctypes.c_double,
               np.dtype(np.int32): ctypes.c_int, np.dtype(np.int64): ctypes.c_longlong}

    def __init__(self, grid_lib, code, name):
        self.name, self.params = name, self.signature(code, name)
        self.fn = getattr(grid_lib, "run_" + name[len("gpumlp_"):])
        self.fn.restype = None

    @staticmethod
    def signature(code, name):
        """The C parameter types of extern "C" kernel ``name`` (a GPUMLP_*_KERNELS(F, SUFFIX) macro
        instance) as written in the .cu source: "ptr", or the ctypes type of a by-value scalar."""
        base, suffix = name.rsplit("_", 1)
        m = re.search(re.escape(base) + r"##SUFFIX\((.*?)\)", code.replace("\\\n", " "), re.S)
        assert m, f"{name} is not declared in the module's code"
        real = ctypes.c_float if suffix == "f32" else ctypes.c_double
        types = []
        for param in m.group(1).split(","):
            ctype = " ".join(param.split()[:-1])
            types.append("ptr" if "*" in ctype else {"F": real, "int": ctypes.c_int, "long long": ctypes.c_longlong,
                                                     "double": ctypes.c_double}[ctype])
        return types

    def __call__(self, grid, block, args):
        assert len(grid) == 1 and len(block) == 1 and grid[0] >= 1 and block[0] % 32 == 0 and block[0] <= 1024
        assert len(args) == len(self.params), f"{self.name}: {len(args)} arguments for {len(self.params)} parameters"
        conv = []
        for i, (a, want) in enumerate(zip(args, self.params)):
            if a is None or isinstance(a, np.ndarray):
                assert want == "ptr", f"{self.name} argument {i}: an array where the kernel takes a {want}"
                assert a is None or a.flags.c_contiguous, "RawKernels need contiguous arrays"
                conv.append(ptr(a))
            else:  # CuPy passes a NumPy scalar by value in its own C type: it must be the kernel's type
                assert isinstance(a, np.generic), f"{self.name} argument {i}: pass NumPy scalars, not {type(a).__name__}"
                assert self.SCALARS[a.dtype] is want, f"{self.name} argument {i}: {a.dtype} for a {want.__name__}"
                conv.append(want(a))
        order = np.arange(grid[0], dtype=np.int32)
        self.fn(ctypes.c_uint(grid[0]), ctypes.c_uint(block[0]), ptr(order), *conv)


def _host_cupy(lib, grid_lib):
    """The strict CuPy stand-in of tests/cupy_standin.py, its kernels run by the two host builds."""
    import cupy_standin  # tests/ is on sys.path under pytest

    def elementwise(kernel, arrays):
        assert (kernel.in_params, kernel.out_params, kernel.operation) == _kernels.ELEMENTWISE[kernel.name]
        assert kernel.preamble == _kernels.source(_kernels.MATH_HEADER)
        assert all(a.dtype == arrays[0].dtype and a.shape == arrays[-1].shape for a in arrays)
        if all(a.flags.c_contiguous for a in arrays):  # in place: the host loop writes into the output itself
            run_elementwise(lib, kernel.name, arrays[0].dtype.type, *arrays)
        else:  # strided views (CuPy indexes them in its loop): the same values through contiguous copies
            out = run_elementwise(lib, kernel.name, arrays[0].dtype.type, *[np.ascontiguousarray(a) for a in arrays])
            arrays[-1][...] = out

    return cupy_standin.make_cupy(elementwise, lambda code, name: _HostRawKernel(grid_lib, code, name))


@pytest.fixture
def standin(lib, grid_lib, monkeypatch):
    """The strict CuPy stand-in installed as ``cupy`` (gpumlp's caches of CuPy and of kernels cleared around
    it): ``.cupy`` the module, ``.ops(dtype)`` a CupyOps on it, ``.model(sizes, **kw)`` an MLP whose
    backend is the stand-in (``backend="cupy"``), ``.upload(a)`` a host array moved to the "device"."""
    import sys

    import gpumlp.mlp
    import gpumlp.pipeline  # noqa: F401 (its resolve is patched below)
    from gpumlp import backend as backend_module

    cupy = _host_cupy(lib, grid_lib)
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    monkeypatch.setitem(sys.modules, "cupy.cublas", cupy.cublas)
    caches = [c for c in (_kernels._elementwise, _kernels._module, backend_module._cupy_module)
              if hasattr(c, "cache_clear")]  # backend._cupy_module looks CuPy up in sys.modules each time
    for c in caches:
        c.cache_clear()
    device = backend_module.Backend("cupy", cupy, "the host stand-in for CuPy")
    real_resolve = backend_module.resolve
    for module in [m for name, m in sys.modules.items() if name.startswith("gpumlp")]:
        if getattr(module, "resolve", None) is real_resolve:  # every module that builds models by backend name
            monkeypatch.setattr(module, "resolve", lambda name="auto": device if name == "cupy" else real_resolve(name))
    from gpumlp._cupy_ops import CupyOps

    def model(sizes, **kw):
        return gpumlp.MLP(sizes, backend="cupy", **kw)

    yield types.SimpleNamespace(cupy=cupy, backend=device, ops=lambda dtype: CupyOps(np.dtype(dtype)), model=model,
                                upload=cupy.asarray)
    for c in caches:
        c.cache_clear()


@pytest.fixture
def host_cupy_ops(standin):
    """CupyOps(dtype) built on the host stand-in."""
    return standin.ops


HOST_STEP_CASES = [
    dict(activation="gelu", bias=True, weight_decay=0.01),  # plain SGD: the update folded into the GEMM
    dict(activation="tanh", optimizer="sgd", momentum=0.9, nesterov=True, bias=True, weight_decay=0.01),
    dict(activation="softplus", optimizer="adam", decoupled=True, bias=True, weight_decay=0.01),
    dict(activation="leaky_relu", loss="squared", optimizer="adam", weight_decay=0.01),
    dict(activation="sigmoid", loss="binary_cross_entropy", momentum=0.9, bias=True, weight_decay=0.01),
    dict(activation="relu", loss="poisson", optimizer="adam", bias=True),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kw", HOST_STEP_CASES, ids=lambda kw: kw["activation"])
def test_cupy_ops_training_steps_on_a_host_stand_in(standin, kw, dtype):
    """MLP.step on the stand-in's "device" (θ, the workspace, the optimizer's state and the batches all
    device arrays, which the kernels and cuBLAS insist on) against the NumPy backend."""
    import gpumlp

    models = [gpumlp.MLP((6, 9, 4), backend="numpy", dtype=dtype, seed=1, **kw),
              standin.model((6, 9, 4), dtype=dtype, seed=1, **kw)]
    assert type(models[1].ops).__name__ == "CupyOps" and type(models[1].theta).__module__.startswith("cupy")
    rng = np.random.default_rng(2)
    tol = {np.float32: 1e-5, np.float64: 1e-12}[dtype]
    for step in range(3):
        X = rng.standard_normal((12, 6))
        y = loss_targets(models[0].loss, rng, (12, 4), np.float64)
        w = rng.uniform(0.5, 2.0, 12) if step == 1 else None
        J = [m.step(X, y, lr=0.05, sample_weight=w) for m in models]
        np.testing.assert_allclose(J[1], J[0], rtol=tol, err_msg=f"J at step {step}")
        np.testing.assert_allclose(models[1].theta.get(), models[0].theta, rtol=tol, atol=tol,
                                   err_msg=f"θ after step {step}")
    assert f"gpumlp_{models[0].loss}" in models[1].ops._kernels  # the stand-in's loss kernel ran


# =====================================================================================================
# CupyOps' GEMMs through CuPy's own cuBLAS wrapper (cupy/cublas.py of the installed CuPy, run as
# source), with cuBLAS replaced by a column-major BLAS that reads and writes the raw pointers with the
# leading dimensions it is handed and rejects ld < rows as cuBLAS does. This checks on the CPU the
# row-major/column-major translation of every gemm/gemv call, including the shapes where a (1, n) or
# (n, 1) array is both C- and F-contiguous (B = 1, q = 1, n_in = 1) and the views into the flat
# parameter buffer, and that the folded SGD update lands in W itself.
# =====================================================================================================
class _ColumnMajorBlas:
    """The pieces of cupy_backends.cuda.libs.cublas that gemm/gemv use, computing on raw pointers."""
    CUBLAS_OP_N, CUBLAS_OP_T, CUBLAS_OP_C = 0, 1, 2
    CUBLAS_POINTER_MODE_HOST, CUBLAS_POINTER_MODE_DEVICE = 0, 1

    def __init__(self):
        self.mode, self.calls, self.buffers = 0, [], []  # buffers: (start, end) of every array handed over
        for char, dtype in (("s", np.float32), ("d", np.float64)):
            setattr(self, f"{char}gemm", lambda *a, _dt=np.dtype(dtype): self._gemm(_dt, *a))
            setattr(self, f"{char}gemv", lambda *a, _dt=np.dtype(dtype): self._gemv(_dt, *a))

    def getPointerMode(self, handle):
        return self.mode

    def setPointerMode(self, handle, mode):
        self.mode = mode

    def _matrix(self, dtype, p, rows, cols, ld):
        """The column-major rows × cols matrix at address p with leading dimension ld (a writable view)."""
        assert rows >= 1 and cols >= 1 and ld >= max(1, rows), f"cuBLAS rejects ld = {ld} for {rows} rows"
        n = ld * (cols - 1) + rows
        end = p + n * dtype.itemsize
        assert any(lo <= p and end <= hi for lo, hi in self.buffers), "cuBLAS would address memory outside the arrays"
        flat = np.frombuffer((ctypes.c_char * (n * dtype.itemsize)).from_address(p), dtype, n)
        return np.lib.stride_tricks.as_strided(flat, (rows, cols), (dtype.itemsize, ld * dtype.itemsize))

    def _scalar(self, dtype, p):
        assert self.mode == self.CUBLAS_POINTER_MODE_HOST
        return float(np.frombuffer((ctypes.c_char * dtype.itemsize).from_address(p), dtype, 1)[0])

    def _op(self, dtype, trans, p, rows, cols, ld):  # op(A) of shape rows × cols
        assert trans in (self.CUBLAS_OP_N, self.CUBLAS_OP_T)
        a = self._matrix(dtype, p, rows, cols, ld) if trans == self.CUBLAS_OP_N else \
            self._matrix(dtype, p, cols, rows, ld).T
        return a.astype(np.float64)

    def _gemm(self, dtype, handle, transa, transb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc):
        self.calls.append("gemm")
        prod = self._op(dtype, transa, A, m, k, lda) @ self._op(dtype, transb, B, k, n, ldb)
        c = self._matrix(dtype, C, m, n, ldc)
        al, be = self._scalar(dtype, alpha), self._scalar(dtype, beta)
        c[...] = al * prod + (be * c if be != 0 else 0)  # beta = 0: C is not read (it may be poison)

    def _gemv(self, dtype, handle, trans, m, n, alpha, A, lda, x, incx, beta, y, incy):
        self.calls.append("gemv")
        assert incx == incy == 1
        a = self._op(dtype, trans, A, m, n, lda) if trans == self.CUBLAS_OP_N else self._op(dtype, trans, A, n, m, lda)
        xv = self._matrix(dtype, x, a.shape[1], 1, a.shape[1])
        yv = self._matrix(dtype, y, a.shape[0], 1, a.shape[0])
        al, be = self._scalar(dtype, alpha), self._scalar(dtype, beta)
        yv[...] = al * (a @ xv) + (be * yv if be != 0 else 0)


class _Dev:
    """A NumPy array seen through the attributes of cupy.ndarray that cupy/cublas.py reads (NumPy's
    contiguity flags follow the same rule as CuPy's: a (1, n) array is both C- and F-contiguous).
    The whole allocation behind it is registered with the BLAS, which refuses to address outside."""
    blas = None

    def __init__(self, a):
        self.a, self.shape, self.ndim, self.dtype, self.size = a, a.shape, a.ndim, a.dtype, a.size
        root = a
        while isinstance(root.base, np.ndarray):
            root = root.base
        start = root.__array_interface__["data"][0]
        _Dev.blas.buffers.append((start, start + root.nbytes))

    _c_contiguous = property(lambda self: self.a.flags.c_contiguous)
    _f_contiguous = property(lambda self: self.a.flags.f_contiguous)
    data = property(lambda self: types.SimpleNamespace(ptr=self.a.ctypes.data))

    def copy(self, order="C"):
        return _Dev(np.array(self.a, order=order))




def _cupy_cublas_wrapper():
    """gemm and gemv of the installed CuPy's cupy/cublas.py, bound to _ColumnMajorBlas and _Dev."""
    import importlib.machinery

    spec = importlib.machinery.PathFinder.find_spec("cupy")  # on sys.path: sys.modules may hold a stand-in
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("CuPy is not installed: its cuBLAS wrapper cannot be read")
    path = os.path.join(list(spec.submodule_search_locations)[0], "cublas.py")
    src = open(path, encoding="utf-8").read()
    imports = re.compile(r"^(import cupy|from cupy import _core|from cupy_backends\.cuda\.libs import cublas|"
                         r"from cupy\.cuda import device|from cupy\.linalg import _util)[ \t]*$", re.M)
    if len(imports.findall(src)) != 5 or "def gemm(" not in src or "def gemv(" not in src:
        pytest.skip("this CuPy's cupy/cublas.py is laid out differently")
    blas = _Dev.blas = _ColumnMajorBlas()
    fake_cupy = types.SimpleNamespace(ndarray=_Dev, empty=lambda shape, dtype, order="C": _Dev(np.empty(shape, dtype, order=order)))
    fake_core = types.SimpleNamespace(elementwise_copy=lambda src_, dst: dst.a.__setitem__(..., src_.a))
    ns = {"__name__": "cupy_cublas_on_the_host", "cupy": fake_cupy, "_core": fake_core, "cublas": blas,
          "device": types.SimpleNamespace(get_cublas_handle=lambda: 0), "_util": None}
    exec(compile(imports.sub("", src), path, "exec"), ns)

    def gemm(transa, transb, a, b, out=None, alpha=1.0, beta=0.0):
        return ns["gemm"](transa, transb, _Dev(a), _Dev(b), out=_Dev(out), alpha=alpha, beta=beta).a

    def gemv(transa, alpha, a, x, beta, y):
        ns["gemv"](transa, alpha, _Dev(a), _Dev(x), beta, _Dev(y))

    import cupy_standin

    return cupy_standin.device_blas(gemm, gemv), blas  # on the stand-in's device arrays only, as cuBLAS


def test_the_column_major_blas_catches_a_wrong_leading_dimension():
    blas = _Dev.blas = _ColumnMajorBlas()
    a = np.zeros((3, 4), np.float32)
    _Dev(a[1:])
    with pytest.raises(AssertionError, match="rejects ld"):
        blas._matrix(np.dtype(np.float32), a.ctypes.data, 3, 4, 2)
    with pytest.raises(AssertionError, match="outside"):
        blas._matrix(np.dtype(np.float32), a.ctypes.data, 3, 5, 3)
    assert blas._matrix(np.dtype(np.float32), a.ctypes.data, 4, 3, 4).shape == (4, 3)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,n_in,n_out", [(7, 5, 3), (1, 5, 3), (7, 5, 1), (1, 5, 1), (7, 1, 3), (1, 1, 1)])
def test_cupy_ops_gemms_through_cupys_cublas_wrapper(standin, dtype, B, n_in, n_out):
    ops = standin.ops(dtype)
    ops._cublas, blas = _cupy_cublas_wrapper()
    rng = np.random.default_rng(B * 100 + n_in * 10 + n_out)
    x, d = rng.standard_normal((B, n_in)).astype(dtype), rng.standard_normal((B, n_out)).astype(dtype)
    theta = rng.standard_normal(3 + n_out * n_in + n_out + 2).astype(dtype)  # W and b views into a flat buffer
    W0, b0 = theta[3:3 + n_out * n_in].reshape(n_out, n_in), theta[3 + n_out * n_in:3 + n_out * n_in + n_out]
    W0, b0, x64, d64 = (a.astype(np.float64) for a in (W0, b0, x, d))
    theta_d, x, d = (standin.upload(a) for a in (theta, x, d))
    W, b = theta_d[3:3 + n_out * n_in].reshape(n_out, n_in), theta_d[3 + n_out * n_in:3 + n_out * n_in + n_out]
    tol = {np.float32: 1e-5, np.float64: 1e-12}[dtype]

    def close(got, want, what):
        np.testing.assert_allclose(got.get(), want, rtol=tol, atol=tol,
                                   err_msg=f"{what}, B={B}, n_in={n_in}, n_out={n_out}")

    poison = lambda *s: standin.upload(np.full(s, 1.2345e20, dtype))  # noqa: E731
    close(ops.linear(x, W, b, poison(B, n_out)), x64 @ W0.T + b0, "linear")
    close(ops.input_grad(d, W, poison(B, n_in)), d64 @ W0, "input_grad")
    close(ops.weight_grad(d, x, poison(n_out, n_in)), d64.T @ x64, "weight_grad")
    close(ops.bias_grad(d, poison(n_out)), d64.sum(axis=0), "bias_grad")
    assert ops.weight_grad(d, x, W, alpha=-0.1, beta=0.99) is W
    close(W, 0.99 * W0 - 0.1 * d64.T @ x64, "folded update in W")
    after = theta_d.get()
    np.testing.assert_array_equal(after[:3], theta[:3])  # nothing outside W moved
    np.testing.assert_array_equal(after[3 + n_out * n_in:], theta[3 + n_out * n_in:])
    assert blas.calls.count("gemm") == 4 and blas.calls.count("gemv") == 1  # no NumPy fallback in between


@pytest.mark.parametrize("kw,B", [(dict(activation="relu", bias=True, weight_decay=0.01), 1),
                                  (dict(activation="tanh", loss="squared", bias=True, momentum=0.9), 5)])
def test_cupy_ops_training_steps_through_cupys_cublas_wrapper(standin, kw, B):
    """Whole steps of a (6, 9, 1) net through CuPy's cuBLAS wrapper: q = 1 (and B = 1 for plain SGD)."""
    import gpumlp

    models = [gpumlp.MLP((6, 9, 1), backend="numpy", dtype="float64", seed=1, **kw),
              standin.model((6, 9, 1), dtype="float64", seed=1, **kw)]
    models[1].ops._cublas, _ = _cupy_cublas_wrapper()
    rng = np.random.default_rng(3)
    for step in range(3):
        X = rng.standard_normal((B, 6))
        y = rng.standard_normal((B, 1)) if models[0].loss == "squared" else np.zeros(B, int)
        J = [m.step(X, y, lr=0.05) for m in models]
        np.testing.assert_allclose(J[1], J[0], rtol=1e-12, err_msg=f"J at step {step}")
        np.testing.assert_allclose(models[1].theta.get(), models[0].theta, rtol=1e-12, atol=1e-12)


def test_cupy_ops_take_a_sparse_first_layer_input_on_a_host_stand_in(standin):
    """CupyOps hands a sparse x (a cupyx CSR matrix on a GPU; the stand-in's here, SciPy's CSR on its
    "device") to the sparse-dense products of gpumlp.ops instead of cuBLAS, for the forward product and
    the weight gradient, folded update included."""
    sp = pytest.importorskip("scipy.sparse")
    import cupy_standin

    ops = standin.ops("float64")
    rng = np.random.default_rng(9)
    X = sp.random(12, 7, density=0.3, format="csr", random_state=9)
    Xd, W, b, d = X.toarray(), rng.standard_normal((5, 7)), rng.standard_normal(5), rng.standard_normal((12, 5))
    up, nan = standin.upload, lambda *s: standin.upload(np.full(s, np.nan))
    Xs = cupy_standin.DeviceCSR(X)
    np.testing.assert_allclose(ops.linear(Xs, up(W), up(b), nan(12, 5)).get(), Xd @ W.T + b, rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(ops.weight_grad(up(d), Xs, nan(5, 7)).get(), d.T @ Xd, rtol=1e-13, atol=1e-14)
    W2 = up(W)
    ops.weight_grad(up(d), Xs, W2, alpha=-0.1, beta=0.99)
    np.testing.assert_allclose(W2.get(), 0.99 * W - 0.1 * d.T @ Xd, rtol=1e-13, atol=1e-14)


def test_the_stand_in_refuses_host_arrays_where_cupy_does(standin):
    """The stand-in is only worth its strictness: NumPy arrays handed to kernels, cuBLAS, operators and
    functions are refused as real CuPy refuses them, and nothing converts a device array implicitly."""
    cp, host = standin.cupy, np.ones((4, 3))
    dev = standin.upload(host)
    ops = standin.ops("float64")
    for call in (lambda: ops.sq_norm(np.ones(5)),  # a RawKernel argument
                 lambda: ops.act_forward("tanh", host, standin.upload(host)),  # an ElementwiseKernel argument
                 lambda: ops.input_grad(dev, host.T, standin.upload(np.ones((4, 4)))),  # cuBLAS
                 lambda: dev + host, lambda: host + dev, lambda: dev * np.float64(2) * np.ones(()),
                 lambda: cp.isfinite(host), lambda: cp.ascontiguousarray(host), lambda: cp.take(dev, np.arange(2)),
                 lambda: np.asarray(dev), lambda: np.isfinite(dev) & host):
        with pytest.raises(TypeError):
            call()
    with pytest.raises(ValueError, match="non-scalar numpy.ndarray cannot be used for fill"):
        dev[...] = host
    # what CuPy allows: host -> device copies, scalars, host index arrays, 0-d host arrays as scalars
    dev[...] = cp.asarray(host * 2)
    dev[np.array([0, 1])] = np.float64(3.0)
    dev[2] = np.array(5.0)
    assert (dev.get() == [[3, 3, 3], [3, 3, 3], [5, 5, 5], [2, 2, 2]]).all()
    assert isinstance(dev.sum(), cp.ndarray) and dev.sum().ndim == 0 and float(dev.sum()) == 39
    assert cp.zeros_like(host).get().shape == (4, 3) and type(dev.data.ptr) is int


FIT_CASES = [
    dict(kw=dict(activation="tanh", momentum=0.9, bias=True, weight_decay=1e-3),
         fit=dict(epochs=3, batch_size=16, lr=0.1, sample_weight=True)),
    dict(kw=dict(activation="relu", optimizer="adam", bias=True),
         fit=dict(epochs=4, batch_size=20, lr=0.01, early_stopping=True, validation_fraction=0.2, train_score=True)),
    dict(kw=dict(activation="gelu", loss="squared", optimizer="adam", decoupled=True, weight_decay=1e-2),
         fit=dict(epochs=2, batch_size=32, lr=0.01, shuffle=False, validation_data=True)),
    dict(kw=dict(activation="sigmoid", weight_decay=1e-3), fit=dict(epochs=2, batch_size=25, lr=0.2,
                                                                    class_weight="balanced")),
]


@pytest.mark.parametrize("case", FIT_CASES, ids=lambda c: c["kw"]["activation"])
def test_fit_on_the_stand_in_follows_the_numpy_backend(standin, case):
    """Whole fits (the trainer's epochs, shuffled device batches, weights, early stopping's split, validation,
    the epoch's one read-back) on the strict stand-in against the NumPy backend, then inference from host data."""
    import gpumlp

    rng = np.random.default_rng(21)
    kw, fit = dict(case["kw"]), dict(case["fit"])
    squared = kw.get("loss") == "squared"
    X = rng.standard_normal((70, 5))
    y = rng.standard_normal((70, 3)) if squared else rng.integers(0, 3, 70)
    if fit.pop("sample_weight", False):
        fit["sample_weight"] = rng.uniform(0.2, 2.0, 70)
    if fit.pop("validation_data", False):
        fit["validation_data"] = (X[:20], y[:20])
    models = [gpumlp.MLP((5, 8, 3), backend="numpy", dtype="float64", seed=4, **kw),
              standin.model((5, 8, 3), dtype="float64", seed=4, **kw)]
    for m in models:
        m.fit(X, y, **fit)
    cpu, dev = models
    assert type(dev.theta).__module__.startswith("cupy") and dev.epochs_ == cpu.epochs_
    np.testing.assert_allclose(dev.loss_curve_, cpu.loss_curve_, rtol=1e-11)
    np.testing.assert_allclose(dev.theta.get(), cpu.theta, rtol=1e-10, atol=1e-12)
    for k in ("score", "val_loss", "val_score"):
        np.testing.assert_allclose(dev.history_[k], cpu.history_[k], rtol=1e-10, equal_nan=True, err_msg=k)
    np.testing.assert_allclose(dev.decision_function(X), cpu.decision_function(X), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dev.score(X, y), cpu.score(X, y), rtol=1e-10)
    if not squared:
        np.testing.assert_array_equal(dev.predict(X), cpu.predict(X))
        np.testing.assert_allclose(dev.predict_proba(X), cpu.predict_proba(X), rtol=1e-10, atol=1e-14)


def _device_addresses(m):
    """Where θ, ∂L/∂θ and every array of the optimizer's state live on the "device" (.data.ptr, as CuPy's)."""
    o = m.optimizer
    names = o.state_names + (("step",) if o.name == "adam" else ())
    return {k: getattr(o, k).data.ptr for k in names} | {"theta": m.theta.data.ptr, "grad": m.grad.data.ptr}


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the overflow of the diverging fit is the point
@pytest.mark.parametrize("kw", [dict(momentum=0.9), dict(optimizer="adam")], ids=["momentum", "adam"])
def test_the_training_state_on_the_stand_in_keeps_its_device_addresses(standin, kw, tmp_path):
    """The optimizer's device arrays (and θ, ∂L/∂θ) keep their addresses across load_state_dict, a resumed
    file, set_params, a divergence restore inside fit and reset_parameters, with the values each promises;
    and the state survives a checkpoint exactly (the device counter and moments round-trip)."""
    import gpumlp

    rng = np.random.default_rng(22)
    X, y = rng.standard_normal((48, 5)), rng.integers(0, 3, 48)
    m = standin.model((5, 8, 3), dtype="float64", seed=3, bias=True, **kw).fit(X, y, epochs=2, batch_size=16, lr=0.1)
    where = _device_addresses(m)
    saved = m.state_dict()
    m.fit(X, y, epochs=1, batch_size=16, lr=0.1)
    m.load_state_dict(saved)
    assert _device_addresses(m) == where and m.optimizer.t == saved.meta["optimizer"]["t"] == 6
    for k, v in m.optimizer.state_arrays().items():
        np.testing.assert_array_equal(v.get(), saved.arrays[f"optimizer.{k}"])
    m.save(tmp_path / "m.npz")
    m.fit(X, y, epochs=1, batch_size=16, lr=0.1)
    m.load_state_dict(gpumlp.load(tmp_path / "m.npz", backend="numpy").state_dict())
    assert _device_addresses(m) == where
    m.set_params(weight_decay=1e-3)
    assert _device_addresses(m) == where
    before = {k: v.get() for k, v in m.optimizer.state_arrays().items()}
    theta = m.theta.get()
    with pytest.raises(gpumlp.DivergenceError):
        m.fit(X * 1e300, y, epochs=1, batch_size=16, lr=1e10)
    assert _device_addresses(m) == where and m.optimizer.t == 6
    np.testing.assert_array_equal(m.theta.get(), theta)
    for k, v in m.optimizer.state_arrays().items():
        np.testing.assert_array_equal(v.get(), before[k])
    m.reset_parameters()
    assert _device_addresses(m) == where and m.optimizer.t == 0
    assert all(not v.get().any() for v in m.optimizer.state_arrays().values())


@pytest.fixture
def standin_sparse(standin, monkeypatch):
    """The stand-in with cupyx.scipy.sparse (SciPy CSR matrices on its "device"), cuSPARSE taken as loaded."""
    import sys

    import cupy_standin
    from gpumlp import backend as backend_module

    for name, module in (("cupyx", types.ModuleType("cupyx")), ("cupyx.scipy", types.ModuleType("cupyx.scipy")),
                         ("cupyx.scipy.sparse", cupy_standin.make_cupyx())):
        monkeypatch.setitem(sys.modules, name, module)
    real = backend_module.require_cuda_library
    monkeypatch.setattr(backend_module, "require_cuda_library",
                        lambda name, *a: None if name == "cuSPARSE" else real(name, *a))
    return standin


@pytest.mark.parametrize("kw", [dict(momentum=0.9), dict(optimizer="adam", weight_decay=1e-2), dict()],
                         ids=["momentum", "adam", "sgd"])
def test_sparse_fit_on_the_stand_in_follows_the_numpy_backend(standin_sparse, kw):
    """Sparse X moved to the "device" whole (backend._csr), its batches gathered as CSR row subsets by a
    device permutation, the first layer's products sparse-dense: the NumPy backend's run."""
    sp = pytest.importorskip("scipy.sparse")
    import gpumlp

    X = sp.random(50, 7, density=0.3, format="csr", random_state=9)
    y = np.random.default_rng(0).integers(0, 3, 50)
    a = gpumlp.MLP((7, 6, 3), backend="numpy", dtype="float64", seed=1, bias=True, **kw).fit(X, y, epochs=2, batch_size=16)
    b = standin_sparse.model((7, 6, 3), dtype="float64", seed=1, bias=True, **kw).fit(X, y, epochs=2, batch_size=16)
    np.testing.assert_allclose(b.theta.get(), a.theta, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(b.decision_function(X), a.decision_function(X), rtol=1e-10, atol=1e-13)


def test_lbfgs_and_the_estimators_on_the_stand_in(standin):
    """Full-batch L-BFGS (θ out to SciPy and back each evaluation) and the scikit-learn estimators (host
    coefs_ written back into the device θ, partial_fit, early stopping) on the strict stand-in."""
    import gpumlp
    from gpumlp.sklearn import MLPClassifier, MLPRegressor

    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((40, 5)), rng.integers(0, 3, 40)
    a = gpumlp.MLP((5, 6, 3), backend="numpy", dtype="float64", seed=1, optimizer="lbfgs").fit(X, y, epochs=5)
    b = standin.model((5, 6, 3), dtype="float64", seed=1, optimizer="lbfgs").fit(X, y, epochs=5)
    np.testing.assert_allclose(b.theta.get(), a.theta, rtol=1e-8, atol=1e-12)
    fits = []
    for backend in ("numpy", "cupy"):
        c = MLPClassifier(hidden_layer_sizes=(6,), solver="adam", max_iter=3, backend=backend, random_state=0)
        with pytest.warns(Warning):  # ConvergenceWarning after 3 iterations
            c.fit(X, y)
        c.coefs_[0][0, 0] = 0.5  # a host edit, written back into θ before the next use
        c.partial_fit(X, y)
        fits.append(c)
    assert type(fits[1].model_.theta).__module__.startswith("cupy")
    np.testing.assert_allclose(fits[1].predict_proba(X), fits[0].predict_proba(X), rtol=1e-9, atol=1e-12)
    r = MLPRegressor(hidden_layer_sizes=(6,), max_iter=4, backend="cupy", random_state=0, early_stopping=True,
                     validation_fraction=0.25, n_iter_no_change=50)
    with pytest.warns(Warning):
        r.fit(X, X[:, 0])
    assert np.isfinite(r.predict(X)).all()


def test_the_command_line_on_the_stand_in(standin, tmp_path):
    """gpumlp train (and a resume, a checkpointed early-stopping run), evaluate and predict with
    --backend cupy on the strict stand-in: the command line's device code paths."""
    from gpumlp import cli

    rng = np.random.default_rng(5)
    X, y = rng.standard_normal((60, 4)), rng.integers(0, 3, 60)
    data, path = tmp_path / "d.npz", tmp_path / "m.npz"
    np.savez(data, X=X, y=y)
    common = ["--data", str(data), "--backend", "cupy", "--quiet", "--hidden", "5", "--batch-size", "16"]
    assert cli.main(["train", *common, "--epochs", "2", "--momentum", "0.9", "--save", str(path)]) == 0
    assert cli.main(["train", *common[:4], "--quiet", "--epochs", "3", "--resume", str(path), "--save", str(path)]) == 0
    assert cli.main(["train", *common, "--epochs", "3", "--optimizer", "adam", "--lr", "1e-3", "--early-stopping",
                     "--checkpoint-every", "1", "--save", str(tmp_path / "a.npz")]) == 0
    assert cli.main(["evaluate", str(path), "--backend", "cupy"]) == 0
    np.savetxt(tmp_path / "new.csv", X[:7], delimiter=",")
    assert cli.main(["predict", str(path), "--backend", "cupy", "--data", str(tmp_path / "new.csv"),
                     "--output", str(tmp_path / "labels.csv")]) == 0
    assert len((tmp_path / "labels.csv").read_text().split()) >= 7
