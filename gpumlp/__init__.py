"""gpumlp: multilayer perceptrons trained by hand-derived, tensor-level backpropagation,
on the GPU through CuPy and on the CPU through NumPy.

    >>> import gpumlp
    >>> m = gpumlp.MLP((64, 128, 10), seed=0)
    >>> m.fit(X, y, epochs=20, lr=0.1)            # doctest: +SKIP
    >>> m.score(X_test, y_test)                    # doctest: +SKIP

Importing needs no GPU and prints nothing; CuPy is imported only when a backend asks for it.
"""
from .backend import resolve as get_backend
from .functions import ACTIVATIONS, LOSSES
from .io import load
from .mlp import MLP, DivergenceError, Forward, Gradients

__version__ = "0.1.0"

__all__ = ["MLP", "Forward", "Gradients", "DivergenceError", "load", "get_backend", "ACTIVATIONS", "LOSSES",
           "__version__"]
