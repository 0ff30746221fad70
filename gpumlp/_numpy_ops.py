"""The training step's building blocks on NumPy: the same math as ``functions.py``, written into
preallocated buffers (``out=``) so that a step allocates as little as possible.

The CuPy backend has a class with the same methods (``_cupy_ops.CupyOps``) built on our kernels;
``MLP._train_step`` is written once against this interface:

    linear(x, W, b, out)                      out = x Wᵀ (+ b)
    act_forward(name, z, h)                   h = φ(z)
    act_backward(name, dh, z, h, dz)          dz = dh ⊙ φ′(z)      (dz may be dh)
    loss_grad(name, o, y, w, do) -> L         L (0-d array) and do = ∂L/∂o in one pass
    weight_grad(d, x, out, alpha, beta)       out = alpha·dᵀx + beta·out
    input_grad(d, W, out)                     out = d W
    bias_grad(d, out)                         out = Σ_rows d
    sq_norm(a) -> 0-d array                   Σ a²
"""
from __future__ import annotations

import numpy as np

from . import functions as F


class NumpyOps:
    xp = np

    # -- linear layer ---------------------------------------------------------------------
    def linear(self, x, W, b, out):
        np.matmul(x, W.T, out=out)
        if b is not None:
            out += b
        return out

    def weight_grad(self, d, x, out, alpha=1.0, beta=0.0):
        if beta == 0.0:
            np.matmul(d.T, x, out=out)
            if alpha != 1.0:
                out *= alpha
        else:
            out *= beta
            out += alpha * (d.T @ x)
        return out

    def input_grad(self, d, W, out):
        return np.matmul(d, W, out=out)

    def bias_grad(self, d, out):
        return d.sum(axis=0, out=out)

    def sq_norm(self, a):
        return np.dot(a, a)

    # -- activations: in place, same formulas as functions.py -------------------------------
    def act_forward(self, name, z, h):
        if name == "relu":
            return np.maximum(z, 0, out=h)
        h[...] = F.ACTIVATIONS[name].forward(z)
        return h

    def act_backward(self, name, dh, z, h, dz):
        if name == "relu":
            return np.multiply(dh, z > 0, out=dz)
        dz[...] = F.ACTIVATIONS[name].backward(dh, z, h)
        return dz

    # -- loss and its gradient in one pass ----------------------------------------------------
    def loss_grad(self, name, o, y, w, do):
        L = F.LOSSES[name].forward(o, y, w)
        do[...] = F.LOSSES[name].backward(o, y, w)
        return L
