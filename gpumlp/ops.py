"""The building blocks of a training step, as one interface that every backend implements.

``Ops`` is the readable reference: each method is the math of ``functions.py`` / ``optim.py``,
written for any array module (``Ops(numpy)``, ``Ops(cupy)``), allocating whatever it likes. The two
fast backends subclass it and override what they make faster, with the same meaning and the same
arguments (the tests hold each override to this reference):

    NumpyOps  (gpumlp/_numpy_ops.py)   in place through preallocated buffers, OpenBLAS alpha/beta GEMM
    CupyOps   (gpumlp/_cupy_ops.py)    cuBLAS and our CUDA kernels (kernels/), one launch per pass

Sparse inputs: ``x`` of ``linear`` and ``weight_grad`` (the first layer's input, nowhere else) may be a
SciPy or cupyx CSR matrix; those two products then stay sparse-dense (this base class's code, which the
fast backends call for them), and X is never densified.

The interface (``out`` buffers are the step's workspace; a method returns what it wrote):

    forward(layers, x, z, h, o)               the lecture's forward chain over every layer (below)
    linear(x, W, b, out)                      out = x Wᵀ (+ b)
    act_forward(name, z, h)                   h = φ(z)                       (h may be z for relu)
    act_backward(name, dh, z, h, dz)          dz = dh ⊙ φ′(z)                (dz may be dh)
    loss_grad(name, o, y, w, do) -> L         L (0-d array) and do = ∂L/∂o in one pass
    weight_grad(d, x, out, alpha, beta)       out = alpha·dᵀx + beta·out     (plain SGD folds its update here)
    input_grad(d, W, out)                     out = d W
    bias_grad(d, out)                         out = Σ_rows d
    sq_norm(a) -> 0-d array                   Σ a²
    sgd_update(theta, grad, velocity, lr, lam, n_decay, momentum, nesterov)
    adam_update(theta, grad, m, v, step, lr, lam, n_decay, beta1, beta2, eps, decoupled)

The update rules are those of ``gpumlp.optim`` (its docstring writes them out). ``step`` is Adam's
step counter, a one-element int64 array on the backend's device: the update reads t = step + 1 from
it, computes the bias corrections c1 = 1 − β1ᵗ, c2 = 1 − β2ᵗ itself and stores t back, so that a
training step reads no host value that changes from one step to the next (what a CUDA graph needs).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from . import functions as F
from .backend import is_sparse


class Layer(NamedTuple):
    """One linear layer and the activation after it (None for the output layer)."""

    W: object  # (out, in)
    b: object  # (out,) or None
    activation: str | None


class Ops:
    """Reference implementation of the step's building blocks for the array module ``xp``."""

    def __init__(self, xp=np):
        self.xp = xp

    # -- the forward chain: written once, used by the reference forward, inference and the step ----
    def forward(self, layers, x, z=None, h=None, o=None):
        """z_l = a_{l−1} W_lᵀ (+ b_l), a_l = φ_l(z_l) for the hidden layers (a_0 = x), o = a_k W_{k+1}ᵀ (+ b).

        Writes into the buffers z[l], h[l] and o when they are given (the step's workspace), else
        allocates. Returns (z list, h list, o).
        """
        zs, hs, a = [], [], x
        for l, layer in enumerate(layers[:-1]):
            zl = self.linear(a, layer.W, layer.b, None if z is None else z[l])
            a = self.act_forward(layer.activation, zl, None if h is None else h[l])
            zs.append(zl)
            hs.append(a)
        last = layers[-1]
        return zs, hs, self.linear(a, last.W, last.b, o)

    # -- linear layer --------------------------------------------------------------------------------
    def linear(self, x, W, b, out=None):
        if out is None:
            return F.linear_forward(x, W, b)
        if is_sparse(x):  # the sparse-dense product (SciPy, cupyx): x is never densified
            out[...] = x @ W.T
        else:
            self.xp.matmul(x, W.T, out=out)
        if b is not None:
            out += b
        return out

    def weight_grad(self, d, x, out, alpha=1.0, beta=0.0):
        g = (x.T @ d).T if is_sparse(x) else d.T @ x  # sparse x: xᵀd, a sparse-dense product
        if alpha != 1.0:
            g *= alpha
        if beta == 0.0:
            out[...] = g
        else:
            out *= beta
            out += g
        return out

    def input_grad(self, d, W, out):
        out[...] = d @ W
        return out

    def bias_grad(self, d, out):
        out[...] = d.sum(axis=0)
        return out

    def sq_norm(self, a):
        return (a * a).sum()

    # -- activations ---------------------------------------------------------------------------------
    def act_forward(self, name, z, h=None):
        value = F.ACTIVATIONS[name].forward(z)
        if h is None:
            return value
        h[...] = value
        return h

    def act_backward(self, name, dh, z, h, dz):
        dz[...] = F.ACTIVATIONS[name].backward(dh, z, h)
        return dz

    # -- loss ----------------------------------------------------------------------------------------
    def loss_grad(self, name, o, y, w, do):
        loss = F.LOSSES[name]
        do[...] = loss.backward(o, y, w)
        return loss.forward(o, y, w)

    # -- update rules (gpumlp.optim's docstring) ------------------------------------------------------
    def sgd_update(self, theta, grad, velocity, lr, lam, n_decay, momentum, nesterov):
        """θ ← θ − η·d; d = g + λθ (weights only), then v ← μv + d and d = v (Nesterov: d + μv)."""
        if lam:
            grad[:n_decay] += lam * theta[:n_decay]
        d = grad
        if momentum:
            velocity *= momentum
            velocity += grad
            d = grad + momentum * velocity if nesterov else velocity
        theta -= lr * d

    def adam_update(self, theta, grad, m, v, step, lr, lam, n_decay, beta1, beta2, eps, decoupled):
        """Adam (coupled L2) or AdamW (decoupled); the bias corrections from the step counter."""
        c1, c2 = adam_corrections(step, beta1, beta2)
        if lam and decoupled:
            theta[:n_decay] *= 1 - lr * lam
        elif lam:
            grad[:n_decay] += lam * theta[:n_decay]
        m *= beta1
        m += (1 - beta1) * grad
        v *= beta2
        v += (1 - beta2) * grad * grad
        # θ ← θ − η m̂/(√v̂ + ε), written as PyTorch does: step = η/c1, denom = √v/√c2 + ε
        denom = v ** 0.5
        denom /= math.sqrt(c2)
        denom += eps
        theta -= (lr / c1) * m / denom


def adam_corrections(step, beta1, beta2):
    """t = step + 1, stored back into the counter; returns Adam's c1 = 1 − β1ᵗ, c2 = 1 − β2ᵗ.

    The host twin of what the CUDA update kernel does on the device (kernels/optim.cu).
    """
    t = int(step[0]) + 1
    step[0] = t
    return 1 - beta1**t, 1 - beta2**t
