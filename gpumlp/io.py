"""Saving and loading models: a NumPy ``.npz`` archive, never pickle (loading executes no code).

A plain first version; the checkpoint issue hardens it (atomic writes, full validation).
"""
from __future__ import annotations

import json

import numpy as np

FORMAT_VERSION = 1


def save(model, path):
    meta, arrays = model._checkpoint_state()
    meta["format_version"] = FORMAT_VERSION
    with open(path, "wb") as f:
        np.savez(f, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), **arrays)


def load(path, backend="auto"):
    from .mlp import MLP

    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(z["meta"].tobytes().decode())
        arrays = {k: z[k] for k in z.files if k != "meta"}
    return MLP._from_checkpoint_state(meta, arrays, backend=backend)
