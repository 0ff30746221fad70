"""A model's outputs, scores and objective over streamed data (``gpumlp.data.stream``), a block of rows
at a time, in bounded memory: what ``MLP.predict``, ``MLP.score`` and ``MLP.objective`` do when given a
streamed source instead of arrays.

    outputs(model, src)            o of every row, in the file's order (an (n, q) array: predict's)
    score(model, src, comm=None)   accuracy or R² (uniform over outputs), as ``metrics.score``
    objective(model, src, comm=None)   J = L + s, L the mean loss over the rows

Each is a sum over blocks (hits and rows; or per output the rows, mean and M2 of the targets merged
as ``Moments`` do, and Σ(y − ŷ)²), so that a data-parallel trainer combines the ranks' sums with one
exchange (``comm``) and gets the score of all parts.
"""
from __future__ import annotations

import numpy as np

from . import functions as F
from .data.preprocessing import Moments
from .data.statistics import check_features, training_view
from .data.streaming import StreamSource, View


def as_view(model, src, labelled=False):
    """``src`` as a ``View`` of the model's dtype (a ``StreamSource``: every row, labels checked when
    ``labelled``; a ``View``: as it is, its rows counted)."""
    if not isinstance(src, (StreamSource, View)):
        raise TypeError(f"expected a streamed source (gpumlp.data.stream) or View, got {type(src).__name__}")
    check_features(src, model.sizes[0])
    if isinstance(src, View):
        return src
    if labelled:
        return training_view(src, model.loss, model.sizes[-1], model.dtype, hidden=model.sizes[1:-1])
    return src.view(model.dtype, hidden=model.sizes[1:-1])


def _blocks(view):
    """(x, y) host blocks of the view's rows in file order, at most the plan's scoring rows each."""
    rows = view.plan.score_rows if view.plan is not None else 8192
    for x, y, _ in view.pieces():
        for i in range(0, x.shape[0], rows):
            yield x[i:i + rows], None if y is None else y[i:i + rows]


def _no_arrays(y, sample_weight):
    if y is not None or sample_weight is not None:
        raise ValueError("y and sample_weight with a streamed source: its labels come from the source (y=None), "
                         "and per-example weights are not streamed")


def outputs(model, src):
    """The outputs o (host, (n, q)) of every row of ``src``, in its order."""
    view = as_view(model, src)
    to_host = model.array_backend.to_host
    parts = [np.asarray(to_host(model.outputs(x))) for x, _ in _blocks(view)]
    if not parts:
        return np.zeros((0, model.sizes[-1]), model.dtype)
    return np.concatenate(parts)


def _sums(model, view):
    """This view's partial sums for the score and the loss: (rows, hits, L·rows, target moments, ss_res)."""
    loss, b = F.LOSSES[model.loss], model.array_backend
    n, hits, L, moments, ss_res = 0, 0.0, 0.0, None, None
    for x, y in _blocks(view):
        if y is None:
            raise ValueError(f"{view.source.path}: scoring needs labels; the source has none")
        o = model.outputs(x)
        yy = b.asarray(y)
        L += float(loss.forward(o, yy, None)) * x.shape[0]
        n += x.shape[0]
        if model.loss == "cross_entropy":
            hits += float((o.argmax(axis=1) == yy).sum())
        elif loss.is_classification:
            hits += float((loss.predict(o) == yy).all(axis=1).sum())
        else:
            yh = np.asarray(b.to_host(yy), np.float64)
            res = ((yh - np.asarray(b.to_host(loss.output(o)), np.float64)) ** 2).sum(axis=0)
            ss_res = res if ss_res is None else ss_res + res
            moments = Moments(yh.shape[1]).add(yh) if moments is None else moments.add(yh)
    return n, hits, L, moments, ss_res


def _combined(model, view, comm):
    n, hits, L, moments, ss_res = _sums(model, view)
    if comm is None or comm.size == 1:
        return n, hits, L, moments, ss_res
    parts = comm.exchange((n, hits, L, None if moments is None else moments.to_json(),
                           None if ss_res is None else ss_res.tolist()))
    n, hits, L = sum(p[0] for p in parts), sum(p[1] for p in parts), sum(p[2] for p in parts)
    moments = ss_res = None
    for p in parts:
        if p[3] is not None:
            m = Moments.from_json(p[3])
            moments = m if moments is None else moments.merge(m)
            ss_res = np.asarray(p[4]) if ss_res is None else ss_res + np.asarray(p[4])
    return n, hits, L, moments, ss_res


def score(model, src, y=None, sample_weight=None, comm=None):
    """``MLP.score`` over a streamed source: accuracy (subset accuracy for binary cross-entropy) or R²."""
    _no_arrays(y, sample_weight)
    n, hits, _, moments, ss_res = _combined(model, as_view(model, src, labelled=True), comm)
    if n == 0:
        raise ValueError("no rows to score")
    if moments is None:
        return hits / n
    ss_tot = np.ldexp(moments.m2, 2 * moments.exponent)
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = np.where(ss_tot > 0, 1 - ss_res / np.where(ss_tot > 0, ss_tot, 1), np.where(ss_res > 0, 0.0, 1.0))
    return float(r2.mean())


def objective(model, src, y=None, sample_weight=None, comm=None):
    """J = L + s over a streamed source, L the mean loss over its rows."""
    _no_arrays(y, sample_weight)
    n, _, L, _, _ = _combined(model, as_view(model, src, labelled=True), comm)
    if n == 0:
        raise ValueError("no rows to score")
    return L / n + F.regulariser(model.weights, model.weight_decay)
