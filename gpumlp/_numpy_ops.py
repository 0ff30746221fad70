"""The training step's building blocks on NumPy (``NumpyOps``, a ``gpumlp.ops.Ops``): the same
math as the reference, written into preallocated buffers (``out=``) so that a step allocates no
temporary of the hidden layers' size (only a few vectors of B elements in the loss). The interface
is documented in ``gpumlp/ops.py``; the CuPy backend implements it too (``_cupy_ops.CupyOps``), and
``gpumlp.step.Step`` is written once against it.

Where the time goes on a CPU (one hidden layer, B=2048, 784-1024-10, float32): the five matrix
products are ~95% of a step and run in OpenBLAS; what is left is a few memory-bound passes over the
(B, h) hidden tensors, so every extra pass or temporary of that size costs a visible percentage.

``weight_grad`` with beta ≠ 0 is how plain SGD folds its update into the product,
W ← (1 − ηλ) W − η dᵀa. NumPy's matmul has no alpha/beta, but NumPy's own wheel bundles OpenBLAS
and exports its ``cblas_?gemm`` (ILP64, under a ``scipy_`` prefix): ``_OpenBlasGemm`` calls it
through ctypes, so the update is one BLAS call with no temporary and no new dependency. Where that
library is absent (NumPy built against MKL or Accelerate, a source build) or fails its self-test,
the fallback computes dᵀx into a scratch buffer and adds it in: same result, two more passes over W.
Set ``GPUMLP_CBLAS=0`` to force the fallback.
"""
from __future__ import annotations

import ctypes
import math
import os
from pathlib import Path

import numpy as np

from . import functions as F
from .backend import is_sparse
from .ops import Ops, adam_corrections

# ---------------------------------------------------------------------------------------------
# out ← alpha·a·b + beta·out through NumPy's bundled OpenBLAS
# ---------------------------------------------------------------------------------------------

_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112  # CBLAS enum values (cblas.h)


class _OpenBlasGemm:
    """``cblas_sgemm``/``cblas_dgemm`` of the OpenBLAS that NumPy already loaded (ILP64 ABI)."""

    def __init__(self, path: str, prefix: str):
        lib = ctypes.CDLL(path)  # already mapped by NumPy: the same library and thread pool
        self.path = path
        self._gemm = {}
        for dtype, letter, scalar in ((np.float32, "s", ctypes.c_float), (np.float64, "d", ctypes.c_double)):
            f = getattr(lib, f"{prefix}cblas_{letter}gemm64_")
            i64, ptr = ctypes.c_int64, ctypes.c_void_p
            # (order, transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc); enums are C ints
            f.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, i64, i64, i64,
                          scalar, ptr, i64, ptr, i64, scalar, ptr, i64]
            f.restype = None
            self._gemm[np.dtype(dtype)] = f

    @staticmethod
    def _layout(a):
        """(transpose flag, leading dimension) of a 2-D array as a row-major BLAS operand, or None.

        A row-contiguous array is used as it is; a column-contiguous one (the transpose of a
        row-contiguous array, like ``d.T``) is passed as that array with the transpose flag.
        """
        r, c = a.shape
        s0, s1 = a.strides
        k = a.itemsize
        if s1 == k and s0 % k == 0 and s0 // k >= max(c, 1):
            return _NO_TRANS, s0 // k
        if s0 == k and s1 % k == 0 and s1 // k >= max(r, 1):
            return _TRANS, s1 // k
        return None

    def __call__(self, a, b, out, alpha, beta) -> bool:
        """out ← alpha·a·b + beta·out in one BLAS call. Returns False, having done nothing, when the
        dtypes or layouts do not fit BLAS (the caller then falls back to NumPy)."""
        f = self._gemm.get(out.dtype)
        if f is None or a.dtype != out.dtype or b.dtype != out.dtype or 0 in a.shape or 0 in b.shape:
            return False
        la, lb, lc = self._layout(a), self._layout(b), self._layout(out)
        if la is None or lb is None or lc is None or lc[0] != _NO_TRANS or not out.flags.writeable:
            return False
        if np.may_share_memory(out, a) or np.may_share_memory(out, b):
            return False
        (m, k), n = a.shape, b.shape[1]
        f(_ROW_MAJOR, la[0], lb[0], m, n, k, alpha, a.ctypes.data, la[1], b.ctypes.data, lb[1],
          beta, out.ctypes.data, lc[1])
        return True


def _self_test(gemm) -> bool:
    """Both dtypes, every transpose combination, against NumPy: a wrong ABI shows here, not in a fit."""
    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        a, b = rng.standard_normal((5, 3)).astype(dtype), rng.standard_normal((3, 4)).astype(dtype)
        for a_ in (a, np.ascontiguousarray(a.T).T):
            for b_ in (b, np.ascontiguousarray(b.T).T):
                out = rng.standard_normal((5, 4)).astype(dtype)
                want = 0.5 * out.astype(np.float64) - 2.0 * (a.astype(np.float64) @ b)
                if not gemm(a_, b_, out, -2.0, 0.5) or not np.allclose(out, want, rtol=1e-5, atol=1e-5):
                    return False
    return True


def find_openblas_gemm():
    """The alpha/beta GEMM of NumPy's bundled OpenBLAS, or None (absent, disabled, or it failed its
    self-test). Searched where NumPy's wheels put it: ``numpy.libs/`` (Linux, Windows) and
    ``numpy/.dylibs/`` (macOS)."""
    if os.environ.get("GPUMLP_CBLAS", "1").strip() == "0":
        return None
    pkg = Path(np.__file__).parent
    candidates = sorted(pkg.parent.glob("numpy.libs/*openblas64*")) + sorted(pkg.glob(".dylibs/*openblas64*"))
    for path in candidates:
        for prefix in ("scipy_", ""):
            try:
                gemm = _OpenBlasGemm(str(path), prefix)
            except (OSError, AttributeError):
                continue
            if _self_test(gemm):
                return gemm
    return None


_GEMM = "unprobed"


def default_gemm():
    """``find_openblas_gemm()``, probed once per process."""
    global _GEMM
    if _GEMM == "unprobed":
        _GEMM = find_openblas_gemm()
    return _GEMM


# ---------------------------------------------------------------------------------------------
# The ops
# ---------------------------------------------------------------------------------------------


class NumpyOps(Ops):
    """``gemm="auto"`` uses NumPy's OpenBLAS for the folded update when it is there; ``gemm=None``
    forces the pure-NumPy fallback (the tests run both)."""

    def __init__(self, gemm="auto"):
        super().__init__(np)
        self.gemm = default_gemm() if gemm == "auto" else gemm
        self._scratch = {}

    def _buffer(self, tag, shape, dtype):
        """A scratch array kept between steps (one per tag, shape and dtype)."""
        key = (tag, shape, np.dtype(dtype))
        buf = self._scratch.get(key)
        if buf is None:
            if len(self._scratch) >= 16:  # batch sizes changed many times: start afresh
                self._scratch.clear()
            buf = self._scratch[key] = np.empty(shape, dtype)
        return buf

    # -- linear layer ---------------------------------------------------------------------
    def linear(self, x, W, b, out=None):
        if out is None or is_sparse(x):
            return super().linear(x, W, b, out)
        np.matmul(x, W.T, out=out)
        if b is not None:
            out += b
        return out

    def weight_grad(self, d, x, out, alpha=1.0, beta=0.0):
        if is_sparse(x):
            return super().weight_grad(d, x, out, alpha, beta)
        if beta == 0.0 and alpha == 1.0:
            return np.matmul(d.T, x, out=out)
        if self.gemm is not None and self.gemm(d.T, x, out, alpha, beta):
            return out
        if beta == 0.0:
            np.matmul(d.T, x, out=out)
            out *= alpha
            return out
        # Fallback: dᵀx into scratch, then out = beta·out + alpha·dᵀx in place.
        g = self._buffer("weight_grad", out.shape, out.dtype)
        np.matmul(d.T, x, out=g)
        if beta != 1.0:
            out *= beta
        if alpha != 1.0:
            g *= alpha
        out += g
        return out

    def input_grad(self, d, W, out):
        return np.matmul(d, W, out=out)

    def bias_grad(self, d, out):
        return np.sum(d, axis=0, out=out)

    def sq_norm(self, a):
        return np.vdot(a, a)  # BLAS dot: one pass, no temporary

    # -- activations: in place where it is cheap, else the reference formula ----------------
    def act_forward(self, name, z, h=None):
        if h is None:
            return super().act_forward(name, z)
        if name == "relu":  # max(z, 0) against an array of zeros: NumPy's SIMD loop for two arrays runs
            # 3.5-4.5x faster than its loop for an array and a scalar (6 against 26 µs at 256x256 float32)
            return np.maximum(z, self._zeros(z.shape, z.dtype), out=h)
        if name == "tanh":
            return np.tanh(z, out=h)
        if name == "identity":
            np.copyto(h, z)
            return h
        if name == "leaky_relu":  # max(z, slope·z) = where(z > 0, z, slope·z) for 0 < slope < 1
            np.multiply(z, F.LEAKY_SLOPE, out=h)
            return np.maximum(z, h, out=h)
        h[...] = F.ACTIVATIONS[name].forward(z)  # sigmoid, gelu, softplus: not on the fast path
        return h

    def act_backward(self, name, dh, z, h, dz):
        if name == "relu":  # φ′(0) = 0, as the reference
            mask = self._buffer("mask", z.shape, np.bool_)
            np.greater(z, 0, out=mask)
            return np.multiply(dh, mask, out=dz)
        if name == "tanh":  # dh ⊙ (1 − h²)
            s = self._buffer("act", h.shape, h.dtype)
            np.multiply(h, h, out=s)
            np.subtract(1, s, out=s)
            return np.multiply(dh, s, out=dz)
        if name == "identity":
            if dz is not dh:
                np.copyto(dz, dh)
            return dz
        dz[...] = F.ACTIVATIONS[name].backward(dh, z, h)
        return dz

    # -- loss and its gradient in one pass ----------------------------------------------------
    def loss_grad(self, name, o, y, w, do):
        B = o.shape[0]
        wn = None
        if w is not None:  # weights summing to one; all zero for a batch of zero weights (L = 0, do = 0)
            total = w.sum()
            wn = np.divide(w, total if total > 0 else 1, dtype=o.dtype)
        if name == "cross_entropy":
            return self._cross_entropy_grad(o, y, wn, do)
        if name == "squared":
            np.subtract(o, y, out=do)  # r = o − y
            per_example = np.einsum("ij,ij->i", do, do)  # ‖r‖² per row
            L = 0.5 * (per_example.mean() if wn is None else np.dot(wn, per_example))
            if wn is None:
                do /= B
            else:
                do *= wn[:, None]
            return L
        if name in ("binary_cross_entropy", "poisson"):
            per_example = self._pointwise_loss(name, o, y, do)
            L = per_example.mean() if wn is None else np.dot(wn, per_example)
            if wn is None:
                do /= B
            else:
                do *= wn[:, None]
            return L
        L = F.LOSSES[name].forward(o, y, w)
        do[...] = F.LOSSES[name].backward(o, y, w)
        return L

    def _cross_entropy_grad(self, o, y, wn, do):
        """L = mean(log Σ_j e^{o_j − m} − (o_y − m)) and do = (softmax(o) − onehot(y)) / B, with
        m = max_j o_j keeping every exponent ≤ 0.

        Worked on a (q, B) copy: NumPy reduces a (B, q) array along its short rows (q = 10) several
        times slower than a (q, B) one along its columns, and the copies both ways cost less.
        """
        B, q = o.shape
        rows = self._arange(B)
        e = self._buffer("logits_t", (q, B), o.dtype)
        m = self._buffer("row_max", (B,), o.dtype)
        s = self._buffer("row_sum", (B,), o.dtype)
        np.copyto(e, o.T)
        np.max(e, axis=0, out=m)
        np.subtract(e, m, out=e)  # shifted logits, ≤ 0
        label = e[y, rows]  # (B,) shifted logit of each label
        np.exp(e, out=e)
        np.sum(e, axis=0, out=s)  # Σ_j e^{shifted} ∈ [1, q]
        np.divide(e, s, out=e)  # softmax
        e[y, rows] -= 1
        np.log(s, out=s)
        per_example = np.subtract(s, label, out=label)  # −log softmax(o)_y
        if wn is None:
            np.multiply(e.T, 1.0 / B, out=do)
            return np.add.reduce(per_example) / B
        np.multiply(e.T, wn[:, None], out=do)
        return np.dot(wn, per_example)

    @staticmethod
    def _pointwise_loss(name, o, y, do):
        """The loss terms of each row (returned, (B,)) and ∂l/∂o (into do) of the two losses whose terms
        are per element, with functions.py's formulas and their order of operations: the exponential
        is taken once for both (the outputs are (B, q) with q small: these temporaries are cheap)."""
        if name == "binary_cross_entropy":  # e = e^−|o|: l = max(o, 0) − y o + log1p(e), σ(o) = (1 or e)/(1 + e)
            e = np.exp(-np.abs(o))
            terms = np.maximum(o, 0) - y * o + np.log1p(e)
            np.divide(np.where(o >= 0, 1, e), 1 + e, out=do)
        else:  # poisson: l = (e^o − y) − y (o − log y), ∂l/∂o = e^o − y
            mu = np.exp(o)
            terms = (mu - y) - y * (o - np.log(np.where(y > 0, y, 1)))
            np.copyto(do, mu)
        do -= y
        return terms.sum(axis=1)

    def _zeros(self, shape, dtype):
        """A scratch array of zeros (kept between steps; nothing writes into it)."""
        key = ("zeros", shape, np.dtype(dtype))
        z = self._scratch.get(key)
        if z is None:
            if len(self._scratch) >= 16:
                self._scratch.clear()
            z = self._scratch[key] = np.zeros(shape, dtype)
        return z

    def _arange(self, n):
        r = self._scratch.get(("arange", n))
        if r is None:
            r = self._scratch[("arange", n)] = np.arange(n)
        return r

    # -- the optimizers' updates, in place ------------------------------------------------------------
    # The same operations in the same order as the reference (Ops.sgd_update / Ops.adam_update), so
    # the results are identical to the bit; the parameter-sized temporaries go into scratch.
    def sgd_update(self, theta, grad, velocity, lr, lam, n_decay, momentum, nesterov):
        tmp = self._buffer("update", theta.shape, theta.dtype)
        if lam:  # g = ∂L/∂θ + λθ on the weights
            grad[:n_decay] += np.multiply(theta[:n_decay], lam, out=tmp[:n_decay])
        d = grad
        if momentum:  # v ← μv + g (v starts at 0, so the first v is g)
            velocity *= momentum
            velocity += grad
            if nesterov:
                grad += np.multiply(velocity, momentum, out=tmp)
            else:
                d = velocity
        theta -= np.multiply(d, lr, out=tmp)

    def adam_update(self, theta, grad, m, v, step, lr, lam, n_decay, beta1, beta2, eps, decoupled):
        c1, c2 = adam_corrections(step, beta1, beta2)
        tmp = self._buffer("update", theta.shape, theta.dtype)
        denom = self._buffer("adam_denom", theta.shape, theta.dtype)
        if lam and decoupled:
            theta[:n_decay] *= 1 - lr * lam
        elif lam:
            grad[:n_decay] += np.multiply(theta[:n_decay], lam, out=tmp[:n_decay])
        m *= beta1
        m += np.multiply(grad, 1 - beta1, out=tmp)
        v *= beta2
        np.multiply(grad, 1 - beta2, out=tmp)
        v += np.multiply(tmp, grad, out=tmp)
        np.sqrt(v, out=denom)
        denom /= math.sqrt(c2)
        denom += eps
        np.multiply(m, lr / c1, out=tmp)
        theta -= np.divide(tmp, denom, out=tmp)
