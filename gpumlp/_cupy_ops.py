"""The training step's building blocks on CuPy (``CupyOps``, a ``gpumlp.ops.Ops``): the interface
documented in ``gpumlp/ops.py``, built on cuBLAS and on our kernels (``gpumlp/_kernels.py``, sources
in ``kernels/``).

    Ops / NumpyOps                        CupyOps (here)
    linear         x @ W.T (+ b)          cuBLAS gemm into out (+ b in place)
    weight_grad    alpha dᵀx + beta out   one cuBLAS gemm with alpha, beta: the plain-SGD update
                                          W ← (1 − ηλ)W − η dᵀa lands in W, ∂J/∂W never exists
    input_grad     d @ W                  cuBLAS gemm
    bias_grad      d.sum(axis=0)          cuBLAS gemv with a ones vector
    act_forward    φ(z)                   ElementwiseKernel gpumlp_<φ>_forward:  h = φ(z)
    act_backward   dh ⊙ φ′(z)             ElementwiseKernel gpumlp_<φ>_backward: dz = dh ⊙ φ′(z)
    loss_grad      L and ∂L/∂o            RawKernel gpumlp_<loss>: the loss terms (cross-entropy: row max
                                          and log-sum-exp first), ∂L/∂o and the batch sum, one launch
    sq_norm        Σa²                    RawKernel gpumlp_sum (square = 1), one launch
    sgd_update     optim.SGD.update       RawKernel gpumlp_sgd_update: all of θ in one launch
    adam_update    optim.Adam.update      RawKernel gpumlp_adam_update: all of θ in one launch; the
                                          step counter and the bias corrections live on the device

Nothing here allocates after the first call for a batch size, and nothing waits for the GPU: every
result goes into an ``out`` buffer, and the scalars that the step returns (the loss, Σa²) are 0-d
device arrays owned by this object, overwritten by the next call of the same method (read or add
them before the next step, as ``MLP`` does).

TF32. Off by default. ``CupyOps(dtype, tf32=True)``, or the environment variable ``GPUMLP_TF32=1``
read when a model is made, runs the float32 GEMMs of training on TF32 tensor cores (cuBLAS math mode
CUBLAS_TF32_TENSOR_OP_MATH, set around our calls only). Inputs are rounded to a 10-bit mantissa, so
products change at the 1e-3 relative level; training usually tolerates it, comparisons with the
float32 NumPy backend then need that tolerance. It has no effect on float64. (CuPy's own ``matmul``,
used by ``forward``/``predict``, follows CuPy's ``CUPY_TF32`` instead, read when CuPy first multiplies.)
"""
from __future__ import annotations

import os

import numpy as np

from . import _kernels
from .backend import cublas_module, is_sparse
from .ops import Ops

BLOCK = 256  # threads per block of our RawKernels (8 warps)
MAX_BLOCKS = 1024  # grid cap of the reducing kernels: the size of the partial-sums buffer
ROWS_PER_BLOCK = BLOCK // 32  # the loss kernels give each row one warp
# cublas_api.h: CUBLAS_TF32_TENSOR_OP_MATH = 3 (CuPy's cublas module does not name it)
CUBLAS_TF32_TENSOR_OP_MATH = 3


def tf32_from_env():
    return os.environ.get("GPUMLP_TF32", "0").strip().lower() in ("1", "true", "yes", "on")


class CupyOps(Ops):
    def __init__(self, dtype, tf32=None):
        import cupy

        super().__init__(cupy)
        # cuBLAS is loaded here, not at ``import cupy``: a CuPy without it (a driver but no CUDA
        # toolkit, and the wheels of the cuda extras missing) is a BackendUnavailable naming it.
        self._cublas = cublas_module()
        self.dtype = np.dtype(dtype)
        if self.dtype.name not in _kernels.DTYPE_SUFFIX:
            raise TypeError(f"CupyOps supports float32 and float64, got {self.dtype}")
        self._scalar = self.dtype.type
        self.tf32 = (tf32_from_env() if tf32 is None else bool(tf32)) and self.dtype == np.float32
        # Made once, on the current device: the reductions' scratch and the 0-d results.
        self._partial = cupy.empty(MAX_BLOCKS, self.dtype)
        self._counter = cupy.zeros(1, cupy.uint32)  # reset to 0 by each reducing launch
        self._update_counter = cupy.zeros(1, cupy.uint32)  # the Adam update's blocks, reset by its last one
        self._loss = cupy.empty((), self.dtype)
        self._sq = cupy.empty((), self.dtype)
        self._wsum = cupy.empty((), self.dtype)
        self._ones = {}  # batch size -> ones(B), for bias gradients as one gemv
        self._kernels = {}  # name -> kernel object, resolved on first use

    # -- kernel lookup (once per name; the objects compile on first launch) ---------------------
    def _elementwise(self, name):
        k = self._kernels.get(name)
        if k is None:
            k = self._kernels[name] = _kernels.elementwise(name)
        return k

    def _raw(self, name):
        k = self._kernels.get(name)
        if k is None:
            k = self._kernels[name] = _kernels.raw(name, self.dtype)
        return k

    # -- GEMMs, row-major: out = alpha op(a) op(b) + beta out -----------------------------------
    def _gemm(self, transa, transb, a, b, out, alpha=1.0, beta=0.0):
        # cupy.cublas.gemm writes straight into a C- or F-contiguous out (for C order it computes
        # outᵀ = op(b)ᵀ op(a)ᵀ in cuBLAS's column-major view); any other out would be computed in a
        # copy, and an in-place update of W must land in W itself.
        if not (out.flags.c_contiguous or out.flags.f_contiguous):
            raise ValueError("gemm output must be contiguous (a view into the parameter buffer)")
        if not self.tf32:
            return self._cublas.gemm(transa, transb, a, b, out=out, alpha=alpha, beta=beta)
        from cupy.cuda import device
        from cupy_backends.cuda.libs import cublas

        handle = device.get_cublas_handle()
        mode = cublas.getMathMode(handle)
        cublas.setMathMode(handle, CUBLAS_TF32_TENSOR_OP_MATH)
        try:
            return self._cublas.gemm(transa, transb, a, b, out=out, alpha=alpha, beta=beta)
        finally:
            cublas.setMathMode(handle, mode)

    def linear(self, x, W, b, out=None):
        """out = x Wᵀ (+ b).   x (B, in), W (out, in), out (B, out). A sparse x: cuSPARSE, via cupyx."""
        if out is None or is_sparse(x):
            return super().linear(x, W, b, out)
        self._gemm("N", "T", x, W, out)
        if b is not None:
            self.xp.add(out, b, out=out)
        return out

    def weight_grad(self, d, x, out, alpha=1.0, beta=0.0):
        """out = alpha dᵀx + beta out.   d (B, out), x (B, in), out (out, in); beta = 1 − ηλ,
        alpha = −η make it the plain-SGD update of out = W. A sparse x: (xᵀd)ᵀ through cuSPARSE."""
        if is_sparse(x):
            return super().weight_grad(d, x, out, alpha, beta)
        return self._gemm("T", "N", d, x, out, alpha, beta)

    def input_grad(self, d, W, out):
        """out = d W.   d (B, out), W (out, in), out (B, in)."""
        return self._gemm("N", "N", d, W, out)

    def bias_grad(self, d, out):
        """out = Σ_rows d = dᵀ·1 (one gemv).   d (B, n), out (n,)."""
        B = d.shape[0]
        ones = self._ones.get(B)
        if ones is None:
            if len(self._ones) >= 4:
                self._ones.pop(next(iter(self._ones)))
            ones = self._ones[B] = self.xp.ones(B, self.dtype)
        self._cublas.gemv("T", 1.0, d, ones, 0.0, out)
        return out

    def sq_norm(self, a):
        """Σ a² of a contiguous vector, as a 0-d device array owned by this object."""
        return self._sum(a, square=True, out=self._sq)

    def _sum(self, a, square, out):
        if not a.flags.c_contiguous:
            raise ValueError("gpumlp_sum needs a contiguous vector")
        n = a.size
        grid = max(1, min(-(-n // BLOCK), MAX_BLOCKS))
        self._raw("gpumlp_sum")((grid,), (BLOCK,),
                                (a, np.int64(n), np.int32(square), out, self._partial, self._counter))
        return out

    # -- activations ------------------------------------------------------------------------------
    def act_forward(self, name, z, h=None):
        """h = φ(z), one ElementwiseKernel."""
        if h is None:
            return super().act_forward(name, z)
        self._elementwise(f"gpumlp_{name}_forward")(z, h)
        return h

    def act_backward(self, name, dh, z, h, dz):
        """dz = dh ⊙ φ′(z) (from z or h = φ(z)), one ElementwiseKernel; dz may be dh."""
        self._elementwise(f"gpumlp_{name}_backward")(dh, z, h, dz)
        return dz

    # -- loss and ∂L/∂o in one pass ------------------------------------------------------------
    def loss_grad(self, name, o, y, w, do):
        """L (0-d device array owned by this object) and do = ∂L/∂o, one launch (two with weights:
        Σw first, on the device)."""
        xp = self.xp
        B, q = o.shape
        if B >= 2**31 or q >= 2**31:
            raise ValueError(f"batch of shape {o.shape} is too large for the loss kernel")
        if not (o.flags.c_contiguous and do.flags.c_contiguous):
            raise ValueError("loss_grad needs contiguous o and do")
        if name == "cross_entropy":
            kernel = "gpumlp_cross_entropy"
            y = xp.ascontiguousarray(y, dtype=np.int64)  # no copy for MLP's int64 labels
        elif name in ("squared", "binary_cross_entropy", "poisson"):  # targets (B, q), a term per element
            kernel = f"gpumlp_{name}"
            y = xp.ascontiguousarray(y, dtype=self.dtype).reshape(B, q)
        else:
            raise ValueError(f"unknown loss {name!r}")
        if w is not None:
            w = xp.ascontiguousarray(w, dtype=self.dtype)
            self._sum(w, square=False, out=self._wsum)
        grid = max(1, min(-(-B // ROWS_PER_BLOCK), MAX_BLOCKS))
        self._raw(kernel)((grid,), (BLOCK,),
                          (o, y, w, None if w is None else self._wsum, do, self._loss, self._partial,
                           self._counter, np.int32(B), np.int32(q)))
        return self._loss

    # -- the optimizers' fused updates ------------------------------------------------------------------
    def _update_grid(self, n):
        return (max(1, min(-(-n // BLOCK), 65535)),), (BLOCK,)

    def sgd_update(self, theta, grad, velocity, lr, lam, n_decay, momentum, nesterov):
        """optim.SGD.update over all of θ in one launch (velocity None: plain SGD)."""
        s = self._scalar
        grid, block = self._update_grid(theta.size)
        self._raw("gpumlp_sgd_update")(grid, block, (
            theta, grad, velocity if momentum else None, np.int64(theta.size), np.int64(n_decay), s(lr), s(lam),
            s(momentum), np.int32(bool(nesterov))))

    def adam_update(self, theta, grad, m, v, step, lr, lam, n_decay, beta1, beta2, eps, decoupled):
        """optim.Adam.update over all of θ in one launch. ``step`` (int64, on the device) holds the
        steps taken so far: the kernel computes the bias corrections of step t = step + 1 and its last
        block stores t (β1, β2 go in as doubles, for the corrections; the moments use them in F)."""
        s = self._scalar
        grid, block = self._update_grid(theta.size)
        self._raw("gpumlp_adam_update")(grid, block, (
            theta, grad, m, v, step, np.int64(theta.size), np.int64(n_decay), s(lr), s(lam), np.float64(beta1),
            np.float64(beta2), s(eps), np.int32(bool(decoupled)), self._update_counter))
