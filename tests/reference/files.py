"""Model files written by main before the split into model, step and trainer (commit 7500802), and
what continuing them gave there. ``tests/test_reference_results.py`` loads each file with the current
code, continues it the same way and compares the weights bit for bit.

    PYTHONPATH=$PWD python tests/reference/files.py tests/reference      # (re)write them, on main only

The continuations depend on the machine's numerics as training does (``numerics.py``): ``continued``
computes them from the files as they are, which is how other configurations' sets were recorded.

    cli_main.npz       gpumlp train --hidden 16 --epochs 4 --batch-size 50 --save ...  (momentum SGD, digits)
                       continued with: gpumlp train --resume F --epochs 6 --save F
    adam_mid.npz       MLP (64, 16, 10) adam + bias, 3 epochs of fit; continued with fit(epochs=2)
    es_mid.npz         a checkpoint saved by a callback after epoch 3 of an early-stopping fit of
                       12 epochs; continued with the same fit for the remaining 9 epochs
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

import gpumlp
from gpumlp.data import Scaler, load_digits

CLI_TRAIN = ["train", "--hidden", "16", "--epochs", "4", "--batch-size", "50", "--quiet"]
CLI_RESUME = ["train", "--epochs", "6", "--quiet"]


def digits():
    X, y = load_digits()
    return Scaler("standard").fit(X[:600]).transform(X[:600], np.float64), y[:600]


def adam_model():
    return gpumlp.MLP((64, 16, 10), backend="numpy", seed=3, optimizer="adam", bias=True, weight_decay=1e-3)


def adam_continue(m):
    X, y = digits()
    return m.fit(X, y, epochs=2, batch_size=40, lr=0.01)


ES_FIT = dict(batch_size=30, lr=0.05, early_stopping=True, validation_fraction=0.2, n_iter_no_change=20)


def es_model():
    return gpumlp.MLP((64, 16, 10), backend="numpy", seed=4, momentum=0.9, dtype="float64", weight_decay=1e-4)


def es_continue(m, epochs):
    X, y = digits()
    return m.fit(X, y, epochs=epochs, **ES_FIT)


def cli(*args):
    # run from this folder: ``-m`` puts the working directory first on sys.path, and a checkout's root
    # would shadow the gpumlp that PYTHONPATH names (numerics.py records with main's older code)
    subprocess.run([sys.executable, "-m", "gpumlp", *args], check=True, cwd=os.path.dirname(os.path.abspath(__file__)),
                   env={k: v for k, v in os.environ.items() if k != "GPUMLP_BACKEND"})


def write(folder):
    """Write the three model files, then what continuing them gives (``files_continued.npz``)."""
    cli(*CLI_TRAIN, "--save", os.path.join(folder, "cli_main.npz"), "--backend", "numpy")
    X, y = digits()
    adam_model().fit(X, y, epochs=3, batch_size=40, lr=0.01).save(os.path.join(folder, "adam_mid.npz"))

    def save_at_3(model, record):
        if record["epoch"] == 3:
            model.save(os.path.join(folder, "es_mid.npz"))
    es_model().fit(X, y, epochs=12, callbacks=save_at_3, **ES_FIT)
    np.savez_compressed(os.path.join(folder, "files_continued.npz"), **continued(folder))


def continued(folder):
    """The weights that continuing each model file in ``folder`` gives, flat, by file (the tests' steps)."""
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        g = os.path.join(tmp, "g.npz")
        shutil.copy(os.path.join(folder, "cli_main.npz"), g)
        cli(*CLI_RESUME, "--resume", g, "--save", g, "--backend", "numpy")
        saved = gpumlp.load(g, backend="numpy")  # today a Pipeline of the model and its preprocessing
        results["cli_main"] = getattr(saved, "named_steps", {"mlp": saved})["mlp"].get_weights()[0]
    results["adam_mid"] = adam_continue(gpumlp.load(os.path.join(folder, "adam_mid.npz"), backend="numpy")).get_weights()
    results["es_mid"] = es_continue(gpumlp.load(os.path.join(folder, "es_mid.npz"), backend="numpy"), 9).get_weights()
    return {k: np.concatenate([np.ravel(w) for w in v]) if isinstance(v, list) else np.ravel(v)
            for k, v in results.items()}


if __name__ == "__main__":
    write(sys.argv[1])
