"""gpumlp: multilayer perceptrons trained by hand-derived, tensor-level backpropagation,
on the GPU through CuPy and on the CPU through NumPy.

    >>> import gpumlp
    >>> m = gpumlp.MLP((64, 128, 10), seed=0)
    >>> m.fit(X, y, epochs=20, lr=0.1)            # doctest: +SKIP
    >>> m.score(X_test, y_test)                    # doctest: +SKIP

How the code is organised (each module one job; the arrows are imports):

    functions.py   the lecture's equations, one named function each (NumPy reference)
    ops.py         the step's building blocks as one interface; its base class is the reference,
                   _numpy_ops.py and _cupy_ops.py (+ kernels/, via _kernels.py) the fast backends
    backend.py     NumPy or CuPy: the only place that decides, and that asks "is this a CuPy array"
    mlp.py         the model: flat parameters, forward/backward, inference, state_dict   -> step, trainer, io
    step.py        one training step in two phases: gradients (∂L/∂θ into model.grad), then the update
    trainer.py     the epoch loop: batches (batches.py, _stream.py), divergence, monitor.py, callbacks
    distributed.py communicators for several processes: MPI (mpi4py), NCCL (CuPy); agreed errors
    data_parallel.py  the trainer on several ranks: one all-reduce of ∂L/∂θ between the step's phases
    lbfgs.py       full-batch L-BFGS: the step's J(θ) and ∂J/∂θ handed to SciPy's L-BFGS-B (optimizer="lbfgs")
    optim.py       the update rules; schedules.py the learning rate per epoch
    pipeline.py    the model with its preprocessing (imputer, scaler, labels, target scaling): gpumlp.load
    onnx_export.py a model or pipeline as one ONNX graph (gpumlp.to_onnx; needs the onnx extra when called)
    graph.py       the lecture's computational graph of a model, with its gradients (MLP.graph): DOT, SVG, PNG
    gradcheck.py   check_gradients: every gradient of backward against central differences, in float64
    torch_io.py    to_torch / from_torch: a model as a torch.nn.Sequential and back (torch imported on call)
    io.py          model files (ModelState <-> .npz), no model class; data.py data files, splits, labels
    cli/, sklearn.py, bench.py   clients: they use public names only

Importing needs no GPU and prints nothing; CuPy is imported only when a backend asks for it, and
"auto" asks only where a CUDA driver is installed.
"""
from ._version import __version__
from .backend import resolve as get_backend
from .functions import ACTIVATIONS, LOSSES
from .gradcheck import check_gradients
from .mlp import MLP, DivergenceError, Forward, Gradients
from .pipeline import Pipeline, load, to_onnx
from .step import Step
from .trainer import Trainer
from .data_parallel import DataParallelTrainer
from .torch_io import from_torch, to_torch

__all__ = ["MLP", "Pipeline", "Forward", "Gradients", "Step", "Trainer", "DataParallelTrainer", "DivergenceError",
           "load", "to_onnx", "get_backend", "check_gradients", "ACTIVATIONS", "LOSSES", "to_torch", "from_torch", "__version__"]
