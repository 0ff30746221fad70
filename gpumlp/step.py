"""One training step of a model on one batch shape, in two phases: gradients, then the update.

    step = Step(model, batch_size)          # buffers for batches of up to that size, made once
    J = step.gradients(x, y, w)             # J = L + s (0-d backend array); ∂L/∂θ into model.grad
    ...                                     # the seam: a data-parallel trainer all-reduces model.grad here
    step.apply(model.optimizer, lr)         # θ ← update(θ, ∂L/∂θ + λθ): one pass over the flat θ

    J = step.train(x, y, w, optimizer, lr)  # both; plain SGD fused into the backward pass (below)

``model.grad`` holds ∂L/∂θ, the flat gradient of the data loss in θ's layout (weights, then biases).
The regulariser's gradient ∂s/∂θ = λθ (weights only) is a function of θ alone, so the update adds it
inside its own pass over θ (no pass of its own); ``objective_gradient`` adds it into ``model.grad``
for callers that want ∂J/∂θ itself (L-BFGS). Keeping ∂L/∂θ at the seam is also what data-parallel
training needs: summed over ranks, the partial ∂L/∂θ give the global one, where λθ would be counted
once per rank.

Plain SGD (``optimizer.foldable``) is the lecture's W ← W − η(∂L/∂W + λW): ``train`` then folds the
update into each layer's weight-gradient product, W ← (1 − ηλ)W − η dᵀa, so ∂L/∂W is never written.
That is the two phases taken together, valid only when nothing needs the gradient in between.

A step allocates nothing after its first call and never waits for the GPU: every intermediate goes
into this object's workspace; J stays on the device. It reads no host value that changes from step
to step (η changes per epoch at most; Adam's step count lives on the device), so that a CUDA-graph
executor could capture it. A graph replays fixed addresses with the scalars of its capture, so such
an executor (there is none yet) needs:

- fixed input buffers per batch size, written before each replay: x (B, d) in the model's dtype, y
  as (B,) int64 labels or (B, q) targets in the dtype (CupyOps.loss_grad then makes no copy), and w
  (B,) in the dtype, or a second graph without weights. The batch sources (``gpumlp.batches``) yield
  each step's batch at a new address (gathered y and w, slices of an epoch's shuffled copy, alternating
  stream buffers), so their batches must be copied into those buffers. An epoch's smaller last batch
  runs on views of the first rows: a graph of its own.
- one graph per η (it goes into the kernels and the GEMM's alpha by value): captured again when the
  schedule changes it, at most once per epoch.
- J read from the step's result, CupyOps' own 0-d buffer, after each replay (the trainer's
  ``Js[k] = J`` lies outside the step).
- everything else the step touches keeps its address for the model's life: θ and ∂L/∂θ (written only
  in place), this workspace, CupyOps' scratch and result buffers, and the optimizer's arrays (SGD's
  velocity; Adam's m, v and step counter), which ``reset``, ``load_state`` (a resumed checkpoint),
  a divergence restore and ``set_params``' ``adopt_state`` write into instead of replacing
  (``gpumlp.optim``). They are made at the optimizer's first update: capture after one eager step.
- the host-side bookkeeping a replay skips: SGD's step count ``optimizer.t`` (a host counter; Adam's
  lives on the device) advanced by the number of replays.
- GEMMs that can be captured: CuPy's cuBLAS wrapper refuses stream capture (docs GPU.md).
"""
from __future__ import annotations


class Workspace:
    """Buffers of one batch size, made once and reused by every step of that size."""

    def __init__(self, xp, dtype, B, sizes, activations):
        hidden = sizes[1:-1]
        self.z = [xp.empty((B, n), dtype) for n in hidden]
        # relu runs in place (h is z): relu′ needs only the sign, and h > 0 exactly where z > 0. An
        # in-place pass moves a third fewer bytes than writing a second (B, h) tensor.
        self.h = [z if act == "relu" else xp.empty_like(z) for z, act in zip(self.z, activations)]
        self.o = xp.empty((B, sizes[-1]), dtype)
        # d[l] = ∂J/∂(pre-activation of layer l): dz for hidden layers, do for the output layer.
        self.d = [xp.empty((B, n), dtype) for n in sizes[1:]]
        # ∂J/∂h shares d's buffers: act_backward turns it into ∂J/∂z = ∂J/∂h ⊙ φ′(z) in place, one
        # (B, h) tensor fewer to keep in cache (ops allow dz is dh).
        self.dh = self.d[:-1]


class Step:
    """The training step of ``model`` on batches of ``batch_size`` rows (fewer is fine too: a
    smaller batch uses the first rows of the buffers)."""

    def __init__(self, model, batch_size):
        self.model = model
        self.batch_size = int(batch_size)
        self.ws = Workspace(model.array_backend.xp, model.dtype, self.batch_size, model.sizes, model.activations)
        self._smaller = {}  # B -> the first B rows of every buffer (an epoch's last, smaller batch)
        # Views into the model's flat buffers: fixed for the model's life (θ is only ever written in place).
        self._layers, self._W, self._b = model.layers, model.weights, model.biases
        self._gW, self._gb = model.weight_grads, model.bias_grads

    def _buffers(self, B):
        if B == self.batch_size:
            return self.ws
        view = self._smaller.get(B)
        if view is None:
            if not 0 < B < self.batch_size:
                raise ValueError(f"a batch of {B} rows does not fit a step made for {self.batch_size}")
            ws = self.ws
            view = Workspace.__new__(Workspace)
            view.z, view.h, view.o = [a[:B] for a in ws.z], [a[:B] for a in ws.h], ws.o[:B]
            view.d = [a[:B] for a in ws.d]
            view.dh = view.d[:-1]
            if len(self._smaller) >= 2:
                self._smaller.clear()
            self._smaller[B] = view
        return view

    # ------------------------------------------------------------------ forward, loss and s
    def _objective(self, ws, x, y, w):
        """Forward into the workspace; J = L + s as a 0-d backend array, ∂L/∂o into ws.d[-1]."""
        m = self.model
        ops, lam = m.ops, m.weight_decay
        ops.forward(self._layers, x, ws.z, ws.h, ws.o)
        J = ops.loss_grad(m.loss, ws.o, y, w, ws.d[-1])  # L, and ∂L/∂o into d[-1]
        if lam:  # s = λ/2 ‖W‖², before any update; in place, so that a GPU step allocates nothing
            s = ops.sq_norm(m.theta[:m.n_weights])
            s *= 0.5 * lam
            J += s
        return J

    # ------------------------------------------------------------------ backward
    def _backward(self, ws, x, fold_lr=None):
        """Output layer first: ∂J/∂h = d W (from W before any update), the weight and bias gradients
        (or, with ``fold_lr``, the plain-SGD update in their place), then ∂J/∂z = ∂J/∂h ⊙ φ′(z)."""
        m = self.model
        ops, lam = m.ops, m.weight_decay
        W, b, gW, gb = self._W, self._b, self._gW, self._gb
        for l in reversed(range(m.n_layers)):
            a_prev = x if l == 0 else ws.h[l - 1]
            d = ws.d[l]
            if l > 0:
                ops.input_grad(d, W[l], ws.dh[l - 1])
            if fold_lr is None:
                ops.weight_grad(d, a_prev, gW[l])
                if m.bias:
                    ops.bias_grad(d, gb[l])
            else:  # W ← (1 − ηλ) W − η dᵀa: the lecture's update inside the GEMM
                ops.weight_grad(d, a_prev, W[l], alpha=-fold_lr, beta=1.0 - fold_lr * lam)
                if m.bias:  # b ← b − η Σ_rows d, in place (no temporary)
                    ops.bias_grad(d, gb[l])
                    gb[l] *= fold_lr
                    b[l] -= gb[l]
            if l > 0:
                ops.act_backward(m.activations[l - 1], ws.dh[l - 1], ws.z[l - 1], ws.h[l - 1], ws.d[l - 1])

    # ------------------------------------------------------------------ the two phases
    def gradients(self, x, y, w=None):
        """J = L + s on this batch (0-d backend array) and ∂L/∂θ into ``model.grad``; θ unchanged."""
        ws = self._buffers(x.shape[0])
        J = self._objective(ws, x, y, w)
        self._backward(ws, x)
        return J

    def objective_gradient(self, x, y, w=None):
        """J and ∂J/∂θ = ∂L/∂θ + λθ (weights only) in ``model.grad``: the objective as a function of θ."""
        m = self.model
        J = self.gradients(x, y, w)
        if m.weight_decay:
            m.grad[:m.n_weights] += m.weight_decay * m.theta[:m.n_weights]
        return J

    def apply(self, optimizer, lr):
        """θ ← the optimizer's update from ``model.grad`` (∂L/∂θ; λθ is added inside the update)."""
        m = self.model
        optimizer.update(m.theta, m.grad, lr, m.weight_decay, m.n_weights, m.ops)

    def train(self, x, y, w, optimizer, lr):
        """One update on a device batch; returns J before it (0-d backend array). Plain SGD runs fused."""
        if not optimizer.foldable:
            J = self.gradients(x, y, w)
            self.apply(optimizer, lr)
            return J
        ws = self._buffers(x.shape[0])
        J = self._objective(ws, x, y, w)
        self._backward(ws, x, fold_lr=lr)
        return J


def cached_step(steps, model, batch_size):
    """The Step of ``model`` for ``batch_size`` rows from ``steps``, the model's own cache (batch size ->
    Step), made on first use; the cache keeps two sizes: the full batches and one remainder size."""
    step = steps.get(batch_size)
    if step is None:
        if len(steps) >= 2:
            steps.pop(next(iter(steps)))
        step = steps[batch_size] = Step(model, batch_size)
    return step
